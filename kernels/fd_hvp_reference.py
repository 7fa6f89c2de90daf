"""Plain-torch reference of the finite-difference Hessian-vector product ops (paper Eq. 8; DARTS §2.3).

Over the list of shared-parameter tensors θ (any dtype) and a direction v = ∇θ' L_val:

* ``global_norm(v)``: ‖v‖₂ over all tensors, accumulated in fp32 (fp64 for fp64 inputs);
* ``perturb(theta, v, alpha)``: θ + α·v per tensor, computed in fp32 (fp64 for fp64) and rounded once
  to θ's dtype (θ itself is never modified, so "restoring" it is exact by construction);
* ``combine(direct, g_plus, g_minus, beta, eps)``: direct − β·(g⁺ − g⁻)/(2ε), the hypergradient of φ_i.

The Triton multi-tensor kernels of issue 4 must return the same values (tests and benchmarks import
these functions as the reference).
"""
from __future__ import annotations

from typing import Sequence

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: fp32 for fp16/bf16/fp32, fp64 for fp64."""
    return torch.promote_types(dtype, torch.float32)


def global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """‖v‖₂ of the concatenation of ``tensors``: 0-d tensor (:func:`acc_dtype`) on their device."""
    if not tensors:
        raise ValueError("global_norm of an empty list")
    sq = torch.stack([t.detach().to(acc_dtype(t.dtype)).pow(2).sum() for t in tensors])
    return sq.sum().sqrt()


def perturb(theta: Sequence[torch.Tensor], v: Sequence[torch.Tensor], alpha: float | torch.Tensor,
            out: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """θ_k + α·v_k (:func:`acc_dtype` arithmetic, result in θ_k's dtype); ``alpha`` float or 0-d tensor.

    Written into ``out`` when given (so θ⁺ and θ⁻ can share one set of buffers), else new tensors.

    Raises:
        ValueError: the lists differ in length or a pair differs in shape.
    """
    if len(theta) != len(v) or (out is not None and len(out) != len(theta)):
        raise ValueError(f"perturb: {len(theta)} θ tensors but {len(v)} direction tensors"
                         + (f" and {len(out)} outputs" if out is not None else ""))
    res = []
    for k, (t, d) in enumerate(zip(theta, v)):
        if t.shape != d.shape:
            raise ValueError(f"perturb: shape {tuple(t.shape)} vs {tuple(d.shape)}")
        a = acc_dtype(t.dtype)
        val = (t.detach().to(a) + alpha * d.to(a)).to(t.dtype)
        res.append(out[k].copy_(val) if out is not None else val)
    return res


def combine(direct: Sequence[torch.Tensor | None], g_plus: Sequence[torch.Tensor | None],
            g_minus: Sequence[torch.Tensor | None], beta: float, eps: float | torch.Tensor) -> list[torch.Tensor]:
    """direct − β·(g⁺ − g⁻)/(2ε) per tensor, in :func:`acc_dtype`. ``None`` entries count as zero.

    Raises:
        ValueError: see :func:`fill_missing`.
    """
    return [d - beta * (p - m) / (2 * eps) for d, p, m in fill_missing(direct, g_plus, g_minus)]


def fill_missing(direct: Sequence[torch.Tensor | None], g_plus: Sequence[torch.Tensor | None],
                 g_minus: Sequence[torch.Tensor | None]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per parameter, (direct, g⁺, g⁻) in :func:`acc_dtype`, contiguous, with zeros for ``None`` (unused).

    Raises:
        ValueError: see :func:`check_terms`.
    """
    out = []
    for terms in check_terms(direct, g_plus, g_minus):
        ref = next(t for t in terms if t is not None)
        a = acc_dtype(ref.dtype)
        out.append(tuple((torch.zeros(ref.shape, dtype=a, device=ref.device) if t is None else t.to(a)).contiguous()
                         for t in terms))
    return out


def check_terms(direct: Sequence[torch.Tensor | None], g_plus: Sequence[torch.Tensor | None],
                g_minus: Sequence[torch.Tensor | None]) -> list[tuple]:
    """The (direct, g⁺, g⁻) triple of each parameter, checked: the rules every ``combine`` implementation shares.

    Raises:
        ValueError: the lists differ in length, a position is None in all three, or its terms differ in shape.
    """
    if not len(direct) == len(g_plus) == len(g_minus):
        raise ValueError("combine: direct, g_plus and g_minus must have the same length")
    trios = list(zip(direct, g_plus, g_minus))
    for trio in trios:
        ref = next((t for t in trio if t is not None), None)
        if ref is None:
            raise ValueError("combine: a parameter has no gradient in any term")
        if any(t is not None and t.shape != ref.shape for t in trio):
            raise ValueError(f"combine: shapes {[None if t is None else tuple(t.shape) for t in trio]} differ")
    return trios
