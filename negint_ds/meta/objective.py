"""The meta objective F(φ_i) of Algorithm 1, evaluated the plain way: a brute-force reference for tests.

Deliberately shares no code with :mod:`negint_ds.meta.hypergrad` (no ``functional_call``, no overrides):
a fresh copy of the model gets φ_i, takes one real SGD step θ' = θ − β ∇θ L_train^i (``loss.backward()``,
in place on the copy's θ), and is evaluated on the validation sum. Central differences of F along each φ_i
coordinate are then the hypergradient ∇φ_i F that both the exact and the finite-difference methods
approximate (Eq. 3–4).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..model import MaskedLM
from ..params import split_parameters
from .state import MetaInputs


def plain_copy(model: MaskedLM, dtype: torch.dtype | None = None) -> MaskedLM:
    """A plain copy (same dims, values, device and mode; ``dtype`` or the same), free of any hooks on ``model``
    (e.g. DeepSpeed's gradient hooks) and of its compiled forward."""
    p = next(model.parameters())
    with torch.random.fork_rng(devices=[]):  # construction draws an initialisation: keep the caller's RNG state
        out = MaskedLM(model.dims).to(device=p.device, dtype=p.dtype)
    out.load_state_dict(model.state_dict())
    return out.to(dtype or p.dtype).train(model.training)


def meta_objective(model: MaskedLM, lang: int, phi_values: Sequence[torch.Tensor], inputs: MetaInputs,
                   beta: float) -> float:
    """F(φ_i) = (1/|S|) Σ_{j∈S} L_val^j(θ − β ∇θ L_train^i(θ, φ_i), φ_j) on one process, no loss scale.

    Args:
        model: the model at (θ, φ); not modified. Dropout should be off (or masks seeded identically).
        lang: i.
        phi_values: new values for φ_i, one per φ_i parameter in ``named_parameters()`` order.
        inputs: train micro-batches of i and the validation terms, as the hypergradient receives them.
        beta: β.

    Returns:
        F in nats (a Python float).

    Raises:
        ValueError: ``phi_values`` does not hold one tensor per φ_i parameter.
    """
    return _Evaluator(model)(lang, phi_values, inputs, beta)


class _Evaluator:
    """F on one private copy of the model, reset to the original values before every evaluation."""

    def __init__(self, model: MaskedLM):
        self.m = plain_copy(model)
        self.start = {k: v.clone() for k, v in self.m.state_dict().items()}
        self.split = split_parameters(self.m, self.m.dims.n_langs)

    def __call__(self, lang: int, phi_values: Sequence[torch.Tensor], inputs: MetaInputs, beta: float) -> float:
        m, split = self.m, self.split
        m.load_state_dict(self.start)
        phi = list(split.phi[lang].values())
        if len(phi) != len(phi_values):
            raise ValueError(f"meta_objective: {len(phi_values)} values for {len(phi)} φ_{lang} tensors")
        with torch.no_grad():
            for p, val in zip(phi, phi_values):
                p.copy_(val)
        theta = list(split.theta.values())
        theta_ids = {id(p) for p in theta}
        for p in m.parameters():
            p.requires_grad_(id(p) in theta_ids)
            p.grad = None
        loss = sum(m(mb.input_ids, mb.lang_ids, mb.pred_positions, mb.targets, lang=lang) for mb in inputs.train)
        (loss / len(inputs.train)).backward()
        with torch.no_grad():
            for p in theta:
                if p.grad is not None:
                    p -= beta * p.grad
            total = 0.0
            for j, mbs in inputs.val:
                for mb in mbs:
                    total += float(m(mb.input_ids, mb.lang_ids, mb.pred_positions, mb.targets, lang=j)) / (
                        len(inputs.val) * len(mbs))
        return total


def brute_force_hypergradient(model: MaskedLM, lang: int, inputs: MetaInputs, beta: float, delta: float = 1e-5
                              ) -> list[torch.Tensor]:
    """∇φ_i F by central differences of :func:`meta_objective`, one coordinate at a time (2·|φ_i| evaluations).

    Only for tiny float64 models (tests): error O(δ²) plus rounding O(1e-16/δ).
    """
    base = [p.detach().clone() for p in split_parameters(model, model.dims.n_langs).phi[lang].values()]
    objective = _Evaluator(model)
    out = []
    for k, t in enumerate(base):
        g = torch.zeros_like(t)
        flat = g.view(-1)
        for idx in range(t.numel()):
            vals = []
            for sign in (1.0, -1.0):
                moved = [b.clone() for b in base]
                moved[k].view(-1)[idx] += sign * delta
                vals.append(objective(lang, moved, inputs, beta))
            flat[idx] = (vals[0] - vals[1]) / (2 * delta)
        out.append(g)
    return out


__all__ = ["brute_force_hypergradient", "meta_objective", "plain_copy"]
