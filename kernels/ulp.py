"""Comparisons in units in the last place (ulp), for kernels whose compiler fuses multiply-add.

On a GPU Triton emits ``fma.rn.f32`` for ``a + α·b`` (one rounding) where eager torch rounds the product and
the sum separately (two roundings), so the two legitimately differ in the last bit of some elements; with
the same (fp32) α they stay within 1 ulp measured at the operands' magnitude (checked over 5 seeds × fp32,
fp16, bf16 × 70k elements in tests/test_kernels.py's data).
``torch.equal`` is the wrong test for that, and a relative-norm bound cannot tell one flipped bit from a real
error.
"""
from __future__ import annotations

import torch


def ulp(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The spacing of ``dtype``'s (default ``t``'s) format at each element's magnitude, as fp64 (same shape).

    For |x| in [2^e, 2^(e+1)) the spacing is 2^e · eps; subnormals and zero get the subnormal step
    ``tiny · eps``, so a comparison near zero is not infinitely strict.
    """
    fi = torch.finfo(dtype or t.dtype)
    a = t.detach().double().abs()
    # spacing = 2^(floor(log2 |x|)) · eps, for |x| ≥ tiny; below that the subnormal step tiny·eps
    e = torch.floor(torch.log2(a.clamp_min(fi.tiny)))
    return torch.exp2(e) * fi.eps


def ulp_distance(a: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """|a − ref| in ulps of ``ref``'s storage format at ``ref``'s magnitude (fp64, ``ref``'s shape).

    ``scale`` (broadcastable to ``ref``): measure the ulp at max(|ref|, |scale|) instead. For a sum such as
    θ + α·v, an unfused product's rounding is an ulp of the *operand*, which can be many ulps of a result
    that cancels towards zero; pass the operands' magnitude (e.g. max(|θ|, |α v|)) there.
    ``a`` may be any dtype (it is compared in fp64). Non-finite values compare equal only to themselves
    (distance 0 when both are the same inf or both NaN, else inf).

    Raises:
        ValueError: the shapes differ.
    """
    if a.shape != ref.shape:
        raise ValueError(f"ulp_distance: shapes {tuple(a.shape)} and {tuple(ref.shape)} differ")
    x, r = a.detach().double(), ref.detach().double()
    mag = r.abs() if scale is None else torch.maximum(r.abs(), scale.detach().double().abs())
    dist = (x - r).abs() / ulp(mag, ref.dtype)
    same_nonfinite = (~torch.isfinite(r)) & ((x == r) | (torch.isnan(x) & torch.isnan(r)))
    dist = torch.where(same_nonfinite, torch.zeros_like(dist), dist)
    return torch.where(torch.isfinite(r) | same_nonfinite, dist, torch.full_like(dist, float("inf")))


def max_ulp_distance(a: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor | None = None) -> float:
    """The largest :func:`ulp_distance` over all elements (0.0 for empty tensors)."""
    if ref.numel() == 0:
        return 0.0
    return float(ulp_distance(a, ref, scale).max())
