"""The stretched Hard Concrete distribution of Louizos, Welling & Kingma (2018), "Learning Sparse Neural
Networks through L0 Regularization" (arXiv:1712.01312, §2.2–2.3), used for the masks z of Eq. 1 of Wang et al.
(2020, §3.1).

A gate z ∈ [0, 1] with location log α (the paper's π, one per parameter group) is drawn as

    u ~ U(0, 1),  s = σ((log u − log(1 − u) + log α) / β),  s̄ = s (ζ − γ) + γ,  z = min(1, max(0, s̄))

(Louizos et al. Eq. 10 with the stretch of §2.3). Stretching s to (γ, ζ) ⊃ [0, 1] and clamping gives z an
atom at exactly 0 and at exactly 1, while z stays a differentiable function of log α almost everywhere
(reparameterisation trick). The expected number of non-zero gates has the closed form (their Eq. 12)

    P(z ≠ 0) = 1 − Q(s ≤ 0) = σ(log α − β log(−γ / ζ)).

Constants are the paper's: β = 2/3, γ = −0.1, ζ = 1.1. All functions accept any floating dtype and shape and
return the same shape; the RNG draw is the caller's (``u``), so sampling is reproducible and identical across
ranks when the caller seeds it.
"""
from __future__ import annotations

import math

import torch
from torch import nn

#: Temperature β of the concrete relaxation (Louizos et al. §4: 2/3, after Maddison et al. 2017).
BETA = 2.0 / 3.0
#: Stretch interval (γ, ζ) (Louizos et al. §2.3 and §4).
GAMMA = -0.1
ZETA = 1.1
#: β·log(−γ/ζ) < 0: the shift in the closed forms of P(z = 0) and P(z ≠ 0).
_SHIFT_ZERO = BETA * math.log(-GAMMA / ZETA)
#: β·log((1 − γ)/(ζ − 1)) > 0: the shift in the closed form of P(z = 1).
_SHIFT_ONE = BETA * math.log((1.0 - GAMMA) / (ZETA - 1.0))
#: u is kept in [ε, 1 − ε] so log u and log(1 − u) are finite (a float32 U(0, 1) draw can be exactly 0).
_U_EPS = 1e-6


def sample(log_alpha: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Reparameterised Hard Concrete sample z = clamp(σ((log u − log(1−u) + log α)/β)(ζ−γ) + γ, 0, 1).

    Louizos et al. (2018) Eq. 10 (binary concrete) stretched and rectified as in §2.3.

    Args:
        log_alpha: (...) float tensor, the location log α (Wang et al.'s π); gradients flow to it.
        u: uniform noise in [0, 1], broadcastable to ``log_alpha`` (clipped to [1e-6, 1 − 1e-6]).

    Returns:
        z with the broadcast shape and ``log_alpha``'s dtype, every value in [0, 1] (exactly 0 or 1 with
        probabilities :func:`prob_zero` and :func:`prob_one`). Computed in at least fp32: in bf16, 1 − 1e-6
        rounds to 1 and the logistic noise of a 16-bit u would be too coarse.
    """
    work = torch.promote_types(log_alpha.dtype, torch.float32)
    u = u.to(work).clamp(_U_EPS, 1.0 - _U_EPS)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha.to(work)) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0).to(log_alpha.dtype)


def expected_l0(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z ≠ 0) = σ(log α − β log(−γ/ζ)) per gate: the expected L0 norm contribution (Louizos et al. Eq. 12).

    Args:
        log_alpha: (...) float tensor.

    Returns:
        Same shape and dtype, values in (0, 1); differentiable in ``log_alpha``.
    """
    return torch.sigmoid(log_alpha - _SHIFT_ZERO)


def prob_zero(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z = 0) = P(s̄ ≤ 0) = σ(β log(−γ/ζ) − log α) per gate (= 1 − :func:`expected_l0`).

    Derivation: s̄ ≤ 0 ⇔ s ≤ −γ/(ζ−γ) ⇔ L ≤ β·logit(−γ/(ζ−γ)) − log α with L = log u − log(1−u) standard
    logistic, and logit(−γ/(ζ−γ)) = log(−γ/ζ).
    """
    return torch.sigmoid(_SHIFT_ZERO - log_alpha)


def prob_one(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z = 1) = P(s̄ ≥ 1) = σ(log α − β log((1−γ)/(ζ−1))) per gate.

    Derivation as in :func:`prob_zero` with the threshold s ≥ (1−γ)/(ζ−γ), whose logit is log((1−γ)/(ζ−1)).
    """
    return torch.sigmoid(log_alpha - _SHIFT_ONE)


def deterministic_mask(log_alpha: torch.Tensor) -> torch.Tensor:
    """Test-time gate ẑ = clamp(σ(log α)(ζ − γ) + γ, 0, 1) (Louizos et al. Eq. 13, the noise-free estimator).

    ẑ = 0 exactly when σ(log α) ≤ −γ/(ζ−γ), i.e. log α ≤ log(−γ/ζ) ≈ −2.398; ẑ = 1 when log α ≥ log((1−γ)/(ζ−1))
    ≈ 2.398; log α = 0 gives 0.5.

    Args:
        log_alpha: (...) float tensor.

    Returns:
        Same shape and dtype, values in [0, 1].
    """
    return (torch.sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def init_location(drop_rate: float) -> float:
    """Initial log α = log(1 − p) − log p for an initial drop rate p (Louizos et al.'s ``droprate_init``).

    Raises:
        ValueError: p is not in (0, 1).
    """
    if not 0.0 < drop_rate < 1.0:
        raise ValueError(f"init drop rate must be in (0, 1), got {drop_rate}")
    return math.log(1.0 - drop_rate) - math.log(drop_rate)


class HardConcreteGates(nn.Module):
    """A vector of ``n`` Hard Concrete gates with one learnable location each.

    Attributes:
        log_alpha: (n,) float32 parameter, initialised N(μ, 0.01²) with μ = log(1 − p) − log p (Louizos et al.'s
            initialisation, their code's ``droprate_init`` p).

    The default initial drop rate is p = 0.1 (μ ≈ 2.197), not Louizos et al.'s 0.5 (μ = 0). Here the gates are
    learned on a frozen, already trained network: with μ = 0 every head and neuron would start scaled by ≈ 0.5
    (ẑ = 0.5, E[z] = 0.5), far from the pretrained operating point, and the first steps would be spent repairing
    that damage rather than measuring each group's importance. At μ ≈ 2.197 the deterministic mask starts at
    ≈ 0.98, P(z = 0) ≈ 0.02, so the masked model starts within a few per cent of the unmasked one, and log α is
    still below the deterministic mask's saturation point (≈ 2.398) and P(z = 1) ≈ 0.65 < 1, so gradients reach
    every gate from the first step. (Structured-pruning work on pretrained Transformers, e.g. Voita et al. 2019
    and Wang, Wohlwend & Lei 2020, likewise starts the gates near "on".)

    ``forward(u=None, generator=None)`` returns z: a reparameterised sample in training mode (noise ``u`` of shape
    (n,), else drawn from ``generator``), the deterministic mask in eval mode.
    """

    def __init__(self, n: int, init_drop_rate: float = 0.1, init_std: float = 0.01,
                 generator: torch.Generator | None = None):
        super().__init__()
        if n <= 0:
            raise ValueError(f"number of gates must be positive, got {n}")
        mu = init_location(init_drop_rate)
        self.log_alpha = nn.Parameter(torch.randn(n, generator=generator) * init_std + mu)

    @property
    def n(self) -> int:
        """Number of gates."""
        return self.log_alpha.numel()

    def forward(self, u: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """z: (n,) in ``log_alpha``'s dtype — a sample (training) or the deterministic mask (eval)."""
        if not self.training:
            return deterministic_mask(self.log_alpha)
        if u is None:
            u = torch.rand(self.n, generator=generator, dtype=torch.float32,
                           device=generator.device if generator is not None else self.log_alpha.device)
        return sample(self.log_alpha, u.to(self.log_alpha.device))

    def expected_l0(self) -> torch.Tensor:
        """(n,) P(z ≠ 0) per gate (differentiable)."""
        return expected_l0(self.log_alpha)

    def extra_repr(self) -> str:
        return f"n={self.n}"


__all__ = ["BETA", "GAMMA", "ZETA", "HardConcreteGates", "deterministic_mask", "expected_l0", "init_location",
           "prob_one", "prob_zero", "sample"]
