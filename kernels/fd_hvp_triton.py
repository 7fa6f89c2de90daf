"""Multi-tensor Triton kernels for the finite-difference Hessian-vector product (paper Eq. 8).

Same functions and results as :mod:`negint_ds.kernels.fd_hvp_reference`, but each op is one kernel
launch over a list of tensors: a chunk table maps program ids to (tensor, offset), and each tensor's
base address is passed as an int64 and cast to a typed pointer in the kernel. Arithmetic is in fp32
(fp64 for fp64 tensors) whatever the storage dtype.

* ``global_norm(v)``: per-chunk sums of squares, then one deterministic sum (no atomics) → ‖v‖₂.
* ``perturb(theta, v, alpha, out=None)``: out_k = θ_k + α v_k, rounded once to θ_k's dtype; α may be a
  0-d device tensor (ε computed on the device needs no host sync). ``out`` lets θ⁺ and θ⁻ reuse one set
  of buffers; θ is only read, so it is exactly what it was before.
* ``combine(direct, g_plus, g_minus, beta, eps)``: direct − β (g⁺ − g⁻) / 2ε.

Tensors must be contiguous and all on one device (CUDA, or CPU under ``TRITON_INTERPRET=1``); lists
of mixed dtypes are launched once per dtype group.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import triton
import triton.language as tl

from .fd_hvp_reference import acc_dtype, fill_missing

BLOCK = 1024  # elements per inner iteration
CHUNK = 16 * BLOCK  # elements per program

_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float64: tl.float64}


@triton.jit
def _chunk(chunk_t_ptr, chunk_off_ptr, numel_ptr):
    """This program's chunk: (tensor index t, first element, tensor t's numel)."""
    c = tl.program_id(0)
    t = tl.load(chunk_t_ptr + c)
    return t, tl.load(chunk_off_ptr + c), tl.load(numel_ptr + t)


@triton.jit
def _sumsq_kernel(chunk_t_ptr, chunk_off_ptr, addr_ptr, numel_ptr, out_ptr, DT: tl.constexpr, ACC: tl.constexpr,
                  CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    t, start, n = _chunk(chunk_t_ptr, chunk_off_ptr, numel_ptr)
    base = tl.load(addr_ptr + t).to(tl.pointer_type(DT))
    acc = tl.zeros((BLOCK,), dtype=ACC)
    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        x = tl.load(base + offs, mask=offs < n, other=0.0).to(ACC)
        acc += x * x
    tl.store(out_ptr + tl.program_id(0), tl.sum(acc, axis=0))


@triton.jit
def _axpy_kernel(chunk_t_ptr, chunk_off_ptr, theta_addr, v_addr, out_addr, numel_ptr, alpha_ptr,
                 DT_T: tl.constexpr, DT_V: tl.constexpr, ACC: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    t, start, n = _chunk(chunk_t_ptr, chunk_off_ptr, numel_ptr)
    th = tl.load(theta_addr + t).to(tl.pointer_type(DT_T))
    v = tl.load(v_addr + t).to(tl.pointer_type(DT_V))
    out = tl.load(out_addr + t).to(tl.pointer_type(DT_T))
    alpha = tl.load(alpha_ptr).to(ACC)
    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        m = offs < n
        x = tl.load(th + offs, mask=m, other=0.0).to(ACC) + alpha * tl.load(v + offs, mask=m, other=0.0).to(ACC)
        tl.store(out + offs, x.to(DT_T), mask=m)


@triton.jit
def _combine_kernel(chunk_t_ptr, chunk_off_ptr, d_addr, p_addr, m_addr, out_addr, numel_ptr, coef_ptr,
                    DT: tl.constexpr, ACC: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    t, start, n = _chunk(chunk_t_ptr, chunk_off_ptr, numel_ptr)
    dp = tl.load(d_addr + t).to(tl.pointer_type(DT))
    pp = tl.load(p_addr + t).to(tl.pointer_type(DT))
    mp = tl.load(m_addr + t).to(tl.pointer_type(DT))
    out = tl.load(out_addr + t).to(tl.pointer_type(ACC))
    coef = tl.load(coef_ptr).to(ACC)  # β / 2ε
    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        m = offs < n
        d = tl.load(dp + offs, mask=m, other=0.0).to(ACC)
        g = tl.load(pp + offs, mask=m, other=0.0).to(ACC) - tl.load(mp + offs, mask=m, other=0.0).to(ACC)
        tl.store(out + offs, d - coef * g, mask=m)


def _chunks(numels: Sequence[int], device) -> tuple[torch.Tensor, torch.Tensor, int]:
    counts = np.array([max(1, -(-n // CHUNK)) for n in numels], dtype=np.int64)
    tensor_of = np.repeat(np.arange(len(numels), dtype=np.int64), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    offset = (np.arange(len(tensor_of), dtype=np.int64) - first) * CHUNK
    return (torch.from_numpy(tensor_of).to(device), torch.from_numpy(offset).to(device), len(tensor_of))


def _addrs(ts: Sequence[torch.Tensor], device) -> torch.Tensor:
    return torch.tensor([t.data_ptr() for t in ts], dtype=torch.int64, device=device)


def _groups(*lists: Sequence[torch.Tensor]) -> dict[tuple, list[int]]:
    out: dict[tuple, list[int]] = {}
    for i, ts in enumerate(zip(*lists)):
        out.setdefault(tuple(t.dtype for t in ts), []).append(i)
    return out


def _check(ts: Sequence[torch.Tensor], what: str) -> None:
    for t in ts:
        if not t.is_contiguous():
            raise ValueError(f"{what}: multi-tensor kernels need contiguous tensors")


def global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """‖v‖₂ over all tensors: 0-d tensor in fp32 (fp64 if the inputs are fp64)."""
    if not tensors:
        raise ValueError("global_norm of an empty list")
    _check(tensors, "global_norm")
    dev = tensors[0].device
    acc = acc_dtype(max((t.dtype for t in tensors), key=lambda d: torch.finfo(d).bits))
    total = torch.zeros((), dtype=acc, device=dev)
    for (dt,), idx in _groups(tensors).items():
        ts = [tensors[i] for i in idx]
        ct, co, n = _chunks([t.numel() for t in ts], dev)
        part = torch.empty(n, dtype=acc_dtype(dt), device=dev)
        _sumsq_kernel[(n,)](ct, co, _addrs(ts, dev), torch.tensor([t.numel() for t in ts], device=dev), part,
                            DT=_TL[dt], ACC=_TL[acc_dtype(dt)], CHUNK=CHUNK, BLOCK=BLOCK)
        total = total + part.sum().to(acc)
    return total.sqrt()


def perturb(theta: Sequence[torch.Tensor], v: Sequence[torch.Tensor], alpha: float | torch.Tensor,
            out: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """θ_k + α v_k for every k (written into ``out`` when given), in θ_k's dtype.

    Raises:
        ValueError: lists of different lengths, mismatched shapes, or non-contiguous tensors.
    """
    if len(theta) != len(v) or (out is not None and len(out) != len(theta)):
        raise ValueError(f"perturb: {len(theta)} θ tensors, {len(v)} directions, "
                         f"{len(out) if out is not None else '-'} outputs")
    for t, d in zip(theta, v):
        if t.shape != d.shape:
            raise ValueError(f"perturb: shape {tuple(t.shape)} vs {tuple(d.shape)}")
    _check(theta, "perturb θ")
    _check(v, "perturb v")
    if not theta:
        return []
    dev = theta[0].device
    out = list(out) if out is not None else [torch.empty_like(t) for t in theta]
    a = alpha.detach().reshape(1).to(device=dev, dtype=torch.float64) if torch.is_tensor(alpha) else \
        torch.tensor([float(alpha)], dtype=torch.float64, device=dev)
    for (dt_t, dt_v), idx in _groups(theta, v).items():
        ts, vs, os_ = [theta[i] for i in idx], [v[i] for i in idx], [out[i] for i in idx]
        ct, co, n = _chunks([t.numel() for t in ts], dev)
        acc = acc_dtype(dt_t)
        _axpy_kernel[(n,)](ct, co, _addrs(ts, dev), _addrs(vs, dev), _addrs(os_, dev),
                           torch.tensor([t.numel() for t in ts], device=dev), a.to(acc),
                           DT_T=_TL[dt_t], DT_V=_TL[dt_v], ACC=_TL[acc], CHUNK=CHUNK, BLOCK=BLOCK)
    return out


def combine(direct: Sequence[torch.Tensor | None], g_plus: Sequence[torch.Tensor | None],
            g_minus: Sequence[torch.Tensor | None], beta: float, eps: float | torch.Tensor) -> list[torch.Tensor]:
    """direct − β (g⁺ − g⁻) / 2ε per tensor, fp32 (fp64 for fp64); ``None`` entries count as zero.

    Raises:
        ValueError: lists of different lengths, or a position that is None in all three.
    """
    filled = fill_missing(direct, g_plus, g_minus)
    if not filled:
        return []
    dev = filled[0][0].device
    out = [torch.empty_like(f[0]) for f in filled]
    e = eps.detach().to(device=dev, dtype=torch.float64) if torch.is_tensor(eps) else \
        torch.tensor(float(eps), dtype=torch.float64, device=dev)
    coef = (beta / (2 * e)).reshape(1)
    for (dt, _, _), idx in _groups([f[0] for f in filled], [f[1] for f in filled], [f[2] for f in filled]).items():
        ds, ps, ms = ([filled[i][j] for i in idx] for j in range(3))
        ct, co, n = _chunks([t.numel() for t in ds], dev)
        _combine_kernel[(n,)](ct, co, _addrs(ds, dev), _addrs(ps, dev), _addrs(ms, dev),
                              _addrs([out[i] for i in idx], dev), torch.tensor([t.numel() for t in ds], device=dev),
                              coef.to(dt), DT=_TL[dt], ACC=_TL[dt], CHUNK=CHUNK, BLOCK=BLOCK)
    return out
