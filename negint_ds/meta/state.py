"""What one meta step computes with: its batches (:class:`MetaInputs`), the parameter values
(:class:`MetaParams`) and its result (:class:`Hypergradient`). Notation of Wang et al. 2020, §4.1."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..mlm import MLMBatch
from ..params import ParamSplit


@dataclass
class MetaInputs:
    """This rank's batches for one meta step.

    Attributes:
        train: micro-batches of the trained language i for the virtual step and the probes: the θ step's
            own batch (``meta.phi_batch: same``, Algorithm 1) or a fresh one (``fresh``, official code).
        val: the validation sum's terms: (language j, micro-batches of j), one entry per j ∈ S.
        train_phase: the dropout phase name of ``train`` ("train" when it is the θ step's batch, so the
            virtual step, the probes and the θ step draw the same dropout masks; "fresh" otherwise).
    """

    train: list[MLMBatch]
    val: list[tuple[int, list[MLMBatch]]]
    train_phase: str = "train"


@dataclass
class MetaParams:
    """The values the meta step uses for θ and for every φ_j, by parameter name (never written to).

    With ``meta.precision: fp32`` these are fp32 tensors (DeepSpeed's fp32 master weights for θ, the
    per-language optimiser's fp32 masters for φ) passed to a module whose own parameters may be bf16/fp16:
    ``torch.func.functional_call`` then runs every matmul with fp32 parameters. With ``working`` they are
    the module's own parameters (detached).

    Attributes:
        theta_names / theta: θ's parameter names and values (same order and shapes as the module's).
        phi_names / phi: per language j, φ_j's names and values.
        source: where θ's values came from (logged once).
    """

    theta_names: list[str]
    theta: list[torch.Tensor]
    phi_names: list[list[str]]
    phi: list[list[torch.Tensor]]
    source: str = "module"

    @classmethod
    def from_module(cls, model: nn.Module, split: ParamSplit) -> "MetaParams":
        """The module's own parameters (detached): the meta step runs in the training precision."""
        return cls(list(split.theta), [p.detach() for p in split.theta.values()],
                   [list(phi) for phi in split.phi], [[p.detach() for p in phi.values()] for phi in split.phi],
                   source=f"module ({next(iter(split.theta.values())).dtype})")

    @property
    def dtype(self) -> torch.dtype:
        """θ's dtype (the precision of θ', θ±)."""
        return self.theta[0].dtype

    def overrides(self, theta: list[torch.Tensor], lang: int, phi: list[torch.Tensor] | None = None
                  ) -> dict[str, torch.Tensor]:
        """name → tensor for a forward of language ``lang`` at the given θ (and φ_lang, default its values)."""
        out = dict(zip(self.theta_names, theta))
        out.update(zip(self.phi_names[lang], self.phi[lang] if phi is None else phi))
        return out


@dataclass
class Hypergradient:
    """Result of one hypergradient computation (averaged over ranks, loss scale removed).

    ∇φ_i F = ``direct`` + ``second_order`` with ``direct`` = ∂φ_i F at θ' (θ' held fixed) and
    ``second_order`` = −β ∇²_{φ_i,θ} L_train^i(θ, φ_i) · v, v = ∇θ' F (Eq. 4; Eq. 8 approximates it).

    Attributes:
        grad: one tensor per φ_i tensor (fp32; fp64 for an fp64 model), ``direct + second_order``.
        direct, second_order: the two parts, same layout as ``grad``.
        train_loss / val_loss: L_train^i(θ, φ_i) and F at θ' (this rank's mean; nats).
        v_norm: ‖∇θ' F‖.
        eps: the finite-difference step ε = c/‖v‖ (None for ``exact``).
        changed_fraction: share of θ elements that θ⁺ = θ + εv changes after rounding to the dtype the
            probes run in (None when that is fp32 or wider, where it is ~1): near 0 means the difference
            quotient measures rounding, not curvature.
        virtual_changed_fraction: the same for the virtual step θ' = θ − βg.
    """

    grad: list[torch.Tensor]
    direct: list[torch.Tensor]
    second_order: list[torch.Tensor]
    train_loss: float
    val_loss: float
    v_norm: float
    eps: float | None = None
    changed_fraction: float | None = None
    virtual_changed_fraction: float | None = None

    def norms(self) -> tuple[float, float, float]:
        """(‖grad‖, ‖direct‖, ‖second_order‖) in one host sync."""
        sq = torch.stack([torch.stack([t.double().pow(2).sum() for t in ts]).sum()
                          for ts in (self.grad, self.direct, self.second_order)])
        return tuple(float(x) for x in sq.sqrt().tolist())


__all__ = ["Hypergradient", "MetaInputs", "MetaParams"]
