"""Multi-tensor Triton kernels for the finite-difference Hessian-vector product (paper Eq. 8).

Same public functions, signatures and results as :mod:`negint_ds.kernels.fd_hvp_reference` (up to the
rounding of a fused multiply-add, see below), but each op is **one kernel launch per group** of tensors that
share their dtypes and 16-byte alignment (in practice: one launch per dtype, since the caching allocator
hands out 256-byte-aligned blocks):

* ``global_norm(v)``: per-chunk sums of squares, then one ``torch.sum`` over the partials (a fixed reduction
  order, no atomics, so the result is bitwise reproducible) → ‖v‖₂.
* ``perturb(theta, v, alpha, out=None)``: out_k = θ_k + α v_k, computed in fp32 (fp64 for fp64 θ) and rounded
  once to θ_k's dtype. θ is only read.
* ``combine(direct, g_plus, g_minus, beta, eps)``: direct − β (g⁺ − g⁻) / 2ε (paper Eq. 8), read in the
  gradients' own dtypes and written in fp32 (fp64 for fp64); ``None`` terms are zero and never materialised.

How a launch finds its data. Each tensor list of a group (θ, v, out, …) is addressed through one *typed*
base pointer (the list's lowest-addressed tensor) plus a per-chunk element offset read from a table. A chunk
is ``CHUNK`` consecutive elements of one tensor; its table row is ``[elements left in the tensor from the
chunk start, offset in list 0, offset in list 1, …]``. Because the offsets are element counts from a typed
pointer (not int64 addresses cast to pointers, which hide alignment from the compiler), a group whose data
pointers are all 16-byte aligned can promise ``tl.multiple_of(offset, 16 / element size)`` and the loads and
stores compile to 16-byte vector accesses (``LDG.E.128``; see :func:`aot_variants`). Chunks that lie entirely
inside their tensor run unmasked; only a tensor's last chunk is masked.

No host synchronisation. Tables depend only on the data pointers, sizes and dtypes, so they are cached per
(device, stream, lists) in a small LRU (:data:`CACHE_SIZE` entries): a repeated call with the same tensors
makes no host→device copy, and a call with any pointer changed builds a new table (the key holds every
pointer, so a table is never stale). A new table is written into pinned memory and copied with
``non_blocking=True``. Scalars: a Python-float α or coefficient is a kernel argument (fp32 arithmetic, as
torch's own opmath rounds it); a 0-d device tensor is read by the kernel itself (no ``.item()``). fp64 groups
take their scalars from a one-element fp64 device tensor filled by ``torch.full`` (a kernel, not a copy),
because Triton passes Python floats as fp32 (and its interpreter has no fp64 scalar arguments).

Tensors must be on one device (CUDA, or CPU under ``TRITON_INTERPRET=1``). Rounding: on a GPU Triton fuses
θ + α·v into one ``fma`` (one rounding) where eager torch rounds twice, so ``perturb`` may differ from the
reference by 1 ulp at the operands' magnitude (``kernels/ulp.py``); ``combine`` likewise differs by a few
ulps (it multiplies by β/2ε instead of dividing by 2ε).
"""
from __future__ import annotations

import collections
import operator
import threading
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import triton
import triton.language as tl

from .fd_hvp_reference import acc_dtype, check_terms

BLOCK = 1024  # elements per inner iteration: 4 warps × 32 threads × 8 elements (two 16-byte fp32 vectors)
CHUNK = 16 * BLOCK  # elements per program: large enough to amortise the table row, small enough to balance SMs
NUM_WARPS = 4
ALIGN = 16  # bytes: the width of one LDG.E.128 / STG.E.128
CACHE_SIZE = 64  # cached tables (each O(chunks) int64s); the meta step uses a handful of distinct lists

_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float64: tl.float64}
_NAME = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}

# Scalar modes (constexpr MODE): the value is the float argument s; a device scalar *s_ptr; or s / *s_ptr.
_S_ARG, _S_PTR, _S_DIV = 0, 1, 2


# ----------------------------------------------------------------------------------------------- kernels
@triton.jit
def _scalar(s, s_ptr, MODE: tl.constexpr, ACC: tl.constexpr):
    if MODE == 0:
        r = tl.cast(s, ACC)
    elif MODE == 1:
        r = tl.load(s_ptr).to(ACC)
    else:
        r = tl.cast(s, ACC) / tl.load(s_ptr).to(ACC)
    return r


@triton.jit
def _at(row, col: tl.constexpr, base, VEC: tl.constexpr):
    # VEC = elements per 16 bytes when every pointer of the group is 16-byte aligned (else 1): the offset is
    # then a multiple of VEC, which is what lets the compiler emit 16-byte vector accesses.
    return base + tl.multiple_of(tl.load(row + col), VEC)


@triton.jit
def _sumsq_kernel(table, x, part, VEC: tl.constexpr, ACC: tl.constexpr, CHUNK: tl.constexpr,
                  BLOCK: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)
    row = table + c * 2
    rem = tl.load(row)
    px = _at(row, 1, x, VEC)
    r = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=ACC)
    if rem >= CHUNK:
        for i in range(0, CHUNK, BLOCK):
            a = tl.load(px + i + r).to(ACC)
            acc += a * a
    else:
        n = rem.to(tl.int32)  # < CHUNK here
        for j in range(0, n, BLOCK):
            a = tl.load(px + j + r, mask=j + r < n, other=0.0).to(ACC)
            acc += a * a
    tl.store(part + c, tl.sum(acc, axis=0).to(part.dtype.element_ty))


@triton.jit
def _axpy_step(pt, pv, po, offs, mask, a, ACC: tl.constexpr):
    x = tl.load(pt + offs, mask=mask).to(ACC) + a * tl.load(pv + offs, mask=mask).to(ACC)
    # round once to θ's dtype (then to out's, a no-op unless the caller passed another dtype)
    tl.store(po + offs, x.to(pt.dtype.element_ty).to(po.dtype.element_ty), mask=mask)


@triton.jit
def _axpy_kernel(table, theta, v, out, s, s_ptr, VEC_T: tl.constexpr, VEC_V: tl.constexpr, VEC_O: tl.constexpr,
                 MODE: tl.constexpr, ACC: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)
    row = table + c * 4
    rem = tl.load(row)
    pt = _at(row, 1, theta, VEC_T)
    pv = _at(row, 2, v, VEC_V)
    po = _at(row, 3, out, VEC_O)
    a = _scalar(s, s_ptr, MODE, ACC)
    r = tl.arange(0, BLOCK)
    if rem >= CHUNK:
        for i in range(0, CHUNK, BLOCK):
            _axpy_step(pt, pv, po, i + r, None, a, ACC)
    else:
        n = rem.to(tl.int32)
        for j in range(0, n, BLOCK):
            _axpy_step(pt, pv, po, j + r, j + r < n, a, ACC)


@triton.jit
def _combine_step(pd, pp, pm, po, offs, mask, coef, HAS_D: tl.constexpr, HAS_P: tl.constexpr,
                  HAS_M: tl.constexpr, ACC: tl.constexpr):
    if HAS_P:
        g = tl.load(pp + offs, mask=mask).to(ACC)
        if HAS_M:
            g = g - tl.load(pm + offs, mask=mask).to(ACC)
    else:
        g = -tl.load(pm + offs, mask=mask).to(ACC)  # HAS_P or HAS_M holds: the host refuses all-None
    if HAS_D:
        y = tl.load(pd + offs, mask=mask).to(ACC) - coef * g
    else:
        y = -(coef * g)
    tl.store(po + offs, y.to(po.dtype.element_ty), mask=mask)


@triton.jit
def _combine_kernel(table, d, p, m, out, s, s_ptr, VEC_D: tl.constexpr, VEC_P: tl.constexpr, VEC_M: tl.constexpr,
                    VEC_O: tl.constexpr, HAS_D: tl.constexpr, HAS_P: tl.constexpr, HAS_M: tl.constexpr,
                    MODE: tl.constexpr, ACC: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)
    row = table + c * 5
    rem = tl.load(row)
    pd = d
    pp = p
    pm = m
    if HAS_D:
        pd = _at(row, 1, d, VEC_D)
    if HAS_P:
        pp = _at(row, 2, p, VEC_P)
    if HAS_M:
        pm = _at(row, 3, m, VEC_M)
    po = _at(row, 4, out, VEC_O)
    coef = _scalar(s, s_ptr, MODE, ACC)  # β / 2ε
    r = tl.arange(0, BLOCK)
    if rem >= CHUNK:
        for i in range(0, CHUNK, BLOCK):
            _combine_step(pd, pp, pm, po, i + r, None, coef, HAS_D, HAS_P, HAS_M, ACC)
    else:
        n = rem.to(tl.int32)
        for j in range(0, n, BLOCK):
            _combine_step(pd, pp, pm, po, j + r, j + r < n, coef, HAS_D, HAS_P, HAS_M, ACC)


# ------------------------------------------------------------------------------------------ chunk tables
class _Plan(NamedTuple):
    table: torch.Tensor  # (chunks, 1 + lists) int64 on the device
    chunks: int
    bases: tuple  # per list: index (within the group) of the tensor used as the base pointer, or None


_cache: collections.OrderedDict = collections.OrderedDict()
_lock = threading.Lock()
_stats = {"hits": 0, "misses": 0}
_data_ptr = torch.Tensor.data_ptr
_dtype = operator.attrgetter("dtype")


def clear_cache() -> None:
    """Forget every cached chunk table (the next call of each op builds and uploads its tables again)."""
    with _lock:
        _cache.clear()
        _stats.update(hits=0, misses=0)


def cache_info() -> dict:
    """``{"hits", "misses", "size", "max_size"}`` of the chunk-table cache."""
    with _lock:
        return dict(_stats, size=len(_cache), max_size=CACHE_SIZE)


def _upload(host: np.ndarray, device: torch.device) -> torch.Tensor:
    """``host`` on ``device`` without stalling the host: staged in pinned memory, copied with non_blocking."""
    src = torch.from_numpy(host)
    if device.type == "cpu":
        return src
    if device.type == "cuda":
        # the pinned block is recycled by torch's host allocator only after the copy's event completes
        src = torch.empty(src.shape, dtype=src.dtype, pin_memory=True).copy_(src)
    return src.to(device, non_blocking=True)


def _build_plan(numels: Sequence[int], cols: Sequence[tuple | None], device: torch.device) -> _Plan:
    """The chunk table of one group; ``cols[j]`` is (data pointers, element size) of list j, or None."""
    n = np.asarray(numels, dtype=np.int64)
    counts = -(-n // CHUNK)
    tensor_of = np.repeat(np.arange(len(n)), counts)
    start = (np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)) * CHUNK
    table = np.zeros((len(tensor_of), 1 + len(cols)), dtype=np.int64)
    table[:, 0] = n[tensor_of] - start
    bases = []
    for j, col in enumerate(cols):
        if col is None:
            bases.append(None)
            continue
        ptrs, esize = np.asarray(col[0], dtype=np.int64), col[1]
        b = int(ptrs.argmin())
        diff = ptrs - ptrs[b]
        if (diff % esize).any():  # cannot happen for real tensors (data_ptr is element-aligned)
            raise ValueError("data pointers are not multiples of the element size")
        table[:, 1 + j] = (diff // esize)[tensor_of] + start
        bases.append(b)
    return _Plan(_upload(table, device), len(tensor_of), tuple(bases))


class _Group(NamedTuple):
    """Positions of the caller's lists that one launch handles: same dtype per list, same alignment."""

    dtypes: tuple  # per list: its dtype here, or None where that list's entries are None (combine)
    aligned: bool  # every data pointer of every list 16-byte aligned
    idx: list  # positions in the caller's lists
    ptrs: tuple  # per list: the data pointers at those positions, or None
    numels: tuple


def _groups(cols: Sequence[Sequence[torch.Tensor | None]], numels: Sequence[int]) -> list[_Group]:
    """Split the positions with elements by (dtype of each list, alignment); empty tensors need no launch."""
    holes = [any(t is None for t in c) for c in cols]  # not ``None in c``: that would call Tensor.__eq__
    ptrs = [[0 if t is None else t.data_ptr() for t in c] if h else list(map(_data_ptr, c))
            for c, h in zip(cols, holes)]
    dts = [[None if t is None else t.dtype for t in c] if h else list(map(_dtype, c)) for c, h in zip(cols, holes)]
    low = ptrs[0]
    for p in ptrs[1:]:
        low = list(map(operator.or_, low, p))
    # the usual case (one dtype per list, every pointer aligned, no empty tensor) skips the per-position loop;
    # it is this function's cost that a training step pays on every call
    if all(numels) and all(len(set(d)) == 1 for d in dts) and not any(x % ALIGN for x in low):
        key = tuple(d[0] for d in dts)
        return [_Group(key, True, list(range(len(low))),
                       tuple(None if dt is None else tuple(p) for dt, p in zip(key, ptrs)), tuple(numels))]
    keyed: dict[tuple, list[int]] = {}
    for k, key in enumerate(zip(*dts, [x % ALIGN == 0 for x in low])):
        if numels[k]:
            keyed.setdefault(key, []).append(k)
    return [_Group(key[:-1], key[-1], idx, tuple(None if dt is None else tuple(p[k] for k in idx)
                                                 for dt, p in zip(key[:-1], ptrs)),
                   tuple(numels[k] for k in idx)) for key, idx in keyed.items()]


def _plan(device: torch.device, g: _Group) -> _Plan:
    """The chunk table of group ``g``: from the cache, or built and uploaded (without a host sync)."""
    # the stream is part of the key: a table is then only read on the stream its copy was queued on
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream, g.numels, g.ptrs, g.dtypes)  # everything the table is a function of
    with _lock:
        plan = _cache.get(key)
        if plan is not None:
            _cache.move_to_end(key)
            _stats["hits"] += 1
            return plan
    plan = _build_plan(g.numels, [None if p is None else (p, dt.itemsize) for p, dt in zip(g.ptrs, g.dtypes)],
                       device)
    with _lock:
        _stats["misses"] += 1
        _cache[key] = plan
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return plan


# ------------------------------------------------------------------------------------------------ helpers
def _vec(dtype: torch.dtype | None, aligned: bool) -> int:
    return ALIGN // dtype.itemsize if aligned and dtype is not None else 1


def _one_device(ts: Sequence[torch.Tensor | None], what: str) -> torch.device:
    devs = {t.device for t in ts if t is not None}
    if len(devs) != 1:
        raise ValueError(f"{what}: tensors must all be on one device, got {sorted(map(str, devs))}")
    return devs.pop()


def _dense(ts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    # the reference accepts strided tensors; a contiguous copy (slow path, rare for parameters and gradients)
    # keeps every kernel access unit-stride
    return [t if t.is_contiguous() else t.contiguous() for t in ts]


def _device_scalar(x: float | torch.Tensor, device: torch.device) -> float | torch.Tensor:
    """A float, or a one-element tensor on ``device`` (a CPU scalar is read on the host: no device sync)."""
    if not torch.is_tensor(x):
        return float(x)
    if x.numel() != 1:
        raise ValueError(f"expected a scalar, got a tensor of shape {tuple(x.shape)}")
    if x.device == device:
        return x.detach()
    if x.device.type == "cpu":
        return float(x)
    raise ValueError(f"scalar tensor on {x.device}, data on {device}")


def _launch(kernel, plan: _Plan, *args, **meta) -> None:
    # fp fusion explicitly on: Triton 3.9 warns that its default flips to off in 3.10, and one rounding of
    # θ + α·v is what the ulp tests (and the docstring) promise on a GPU
    kernel[(plan.chunks,)](plan.table, *args, CHUNK=CHUNK, BLOCK=BLOCK, num_warps=NUM_WARPS, enable_fp_fusion=True,
                           **meta)


# ------------------------------------------------------------------------------------------------- ops
def global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """‖v‖₂ of the concatenation of ``tensors`` (any shapes; fp32, fp16, bf16 or fp64; mixed is fine).

    Returns:
        0-d tensor on the tensors' device: fp32, or fp64 if any input is fp64 (as the reference).

    Raises:
        ValueError: an empty list, or tensors on different devices.

    Strided tensors are copied to contiguous ones first.
    """
    if not tensors:
        raise ValueError("global_norm of an empty list")
    tensors = _dense(tensors)
    dev = _one_device(tensors, "global_norm")
    acc = torch.float32
    for t in tensors:
        acc = torch.promote_types(acc, acc_dtype(t.dtype))
    plans = [(g, _plan(dev, g)) for g in _groups([tensors], [t.numel() for t in tensors])]
    part = torch.empty(sum(p.chunks for _, p in plans), dtype=acc, device=dev)
    at = 0
    for g, plan in plans:
        (dt,) = g.dtypes
        _launch(_sumsq_kernel, plan, tensors[g.idx[plan.bases[0]]], part[at:at + plan.chunks],
                VEC=_vec(dt, g.aligned), ACC=_TL[acc_dtype(dt)])
        at += plan.chunks
    return part.sum().sqrt()


def perturb(theta: Sequence[torch.Tensor], v: Sequence[torch.Tensor], alpha: float | torch.Tensor,
            out: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """θ_k + α v_k for every k, rounded once to θ_k's dtype; θ is never modified.

    Args:
        theta: tensors of any shapes, fp32 / fp16 / bf16 / fp64 (mixed lists are fine).
        v: directions of the same shapes (any of those dtypes, e.g. fp32 v for bf16 θ).
        alpha: a float, or a one-element tensor (on θ's device it is read by the kernel: no host sync).
        out: optional buffers (θ_k's shape; normally θ_k's dtype) written in place and returned, so θ⁺ and
            θ⁻ can share one set of buffers. ``out`` may be θ itself. Strided θ, v or out work through
            contiguous copies (slow path).

    Returns:
        ``out`` (the same tensor objects) or new tensors like θ. Arithmetic is fp32 (fp64 for fp64 θ).

    Raises:
        ValueError: lists of different lengths, mismatched shapes, tensors on different devices, or an
            ``alpha`` tensor with more than one element or on another GPU.
    """
    if len(theta) != len(v) or (out is not None and len(out) != len(theta)):
        raise ValueError(f"perturb: {len(theta)} θ tensors, {len(v)} directions, "
                         f"{len(out) if out is not None else '-'} outputs")
    for k, (t, d) in enumerate(zip(theta, v)):
        if t.shape != d.shape or (out is not None and out[k].shape != t.shape):
            raise ValueError(f"perturb: shape {tuple(t.shape)} vs {tuple(d.shape)}"
                             + (f" vs out {tuple(out[k].shape)}" if out is not None else ""))
    if not theta:
        return []
    dev = _one_device([*theta, *v, *(out or ())], "perturb")
    a = _device_scalar(alpha, dev)
    theta, v = _dense(theta), _dense(v)
    result = list(out) if out is not None else [torch.empty_like(t, memory_format=torch.contiguous_format)
                                                 for t in theta]
    # a strided buffer is written through a contiguous temporary, copied back below
    out = [o if o.is_contiguous() else torch.empty_like(o, memory_format=torch.contiguous_format) for o in result]
    cols = (theta, v, out)
    for g in _groups(cols, [t.numel() for t in theta]):
        dt, dv, do = g.dtypes
        plan = _plan(dev, g)
        s, s_ptr, mode = _scalar_args(a, acc_dtype(dt), dev)
        _launch(_axpy_kernel, plan, *(c[g.idx[b]] for c, b in zip(cols, plan.bases)), s, s_ptr,
                VEC_T=_vec(dt, g.aligned), VEC_V=_vec(dv, g.aligned), VEC_O=_vec(do, g.aligned), MODE=mode,
                ACC=_TL[acc_dtype(dt)])
    for r, o in zip(result, out):
        if r is not o:
            r.copy_(o)
    return result


def _scalar_args(a: float | torch.Tensor, acc: torch.dtype, dev: torch.device) -> tuple:
    """(s, s_ptr, MODE) for the kernels' :func:`_scalar`: value a, read on the device when it lives there."""
    if torch.is_tensor(a):
        return 0.0, a, _S_PTR
    if acc == torch.float64:  # a float argument would be passed as fp32
        return 0.0, torch.full((1,), a, dtype=torch.float64, device=dev), _S_PTR
    return a, None, _S_ARG


def combine(direct: Sequence[torch.Tensor | None], g_plus: Sequence[torch.Tensor | None],
            g_minus: Sequence[torch.Tensor | None], beta: float, eps: float | torch.Tensor) -> list[torch.Tensor]:
    """direct − β (g⁺ − g⁻) / 2ε per parameter: the finite-difference hypergradient of paper Eq. 8.

    Args:
        direct, g_plus, g_minus: equal-length lists; per position, tensors of one shape (any float dtypes,
            read as they are; strided ones through a contiguous copy) or ``None`` (zero; at least one of the
            three must be a tensor).
        beta: the inner step size β (float).
        eps: ε, a float or a one-element tensor (on the data's device it is read by the kernel: no sync).

    Returns:
        New contiguous tensors of each position's shape, in :func:`acc_dtype` of its first non-None term
        (fp32, fp64 for fp64), computed in that dtype as d − (β/2ε)·(g⁺ − g⁻).

    Raises:
        ValueError: lists of different lengths, a position that is None in all three, terms of different
            shapes at one position, tensors on different devices, or a non-scalar ``eps``.
    """
    terms = [tuple(None if t is None else t.detach() for t in trio) for trio in check_terms(direct, g_plus, g_minus)]
    if not terms:
        return []
    dev = _one_device([t for trio in terms for t in trio], "combine")
    terms = [tuple(None if t is None else _dense([t])[0] for t in trio) for trio in terms]
    firsts = [next(t for t in trio if t is not None) for trio in terms]
    out = [torch.empty(f.shape, dtype=acc_dtype(f.dtype), device=dev) for f in firsts]
    e = _device_scalar(eps, dev)
    cols = (*zip(*terms), out)  # direct, g⁺, g⁻ (with None entries), out
    for g in _groups(cols, [o.numel() for o in out]):
        dd, dp, dm, acc = g.dtypes
        plan = _plan(dev, g)
        if acc == torch.float64:
            coef = (torch.full((1,), beta / 2, dtype=torch.float64, device=dev).div_(e) if torch.is_tensor(e)
                    else torch.full((1,), beta / (2 * e), dtype=torch.float64, device=dev))
            s, s_ptr, mode = 0.0, coef, _S_PTR
        elif torch.is_tensor(e):
            s, s_ptr, mode = beta / 2, e, _S_DIV  # β/2 ÷ ε on the device, once per program
        else:
            s, s_ptr, mode = beta / (2 * e), None, _S_ARG
        bases = [None if b is None else c[g.idx[b]] for c, b in zip(cols, plan.bases)]
        _launch(_combine_kernel, plan, *bases, s, s_ptr, VEC_D=_vec(dd, g.aligned), VEC_P=_vec(dp, g.aligned),
                VEC_M=_vec(dm, g.aligned), VEC_O=_vec(acc, g.aligned), HAS_D=dd is not None, HAS_P=dp is not None,
                HAS_M=dm is not None, MODE=mode, ACC=_TL[acc])
    return out


# ---------------------------------------------------------------------------------- ahead-of-time report
def aot_variants() -> list:
    """The specialisations this module launches for 16-byte-aligned data, as ``kernels/bench/aot.Variant``.

    sumsq per dtype; axpy per (θ, v) pair with a float α and, for fp32, a device α; combine with a float
    coefficient per dtype and, for fp32, a device ε; fp64 variants read their scalar from the device. One
    unaligned fp32 axpy (VEC = 1) is listed as the control: it must compile to scalar accesses only.
    """
    from .bench.aot import Variant

    fixed = {"CHUNK": CHUNK, "BLOCK": BLOCK}
    out = []
    for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        n = _NAME[dt]
        acc = acc_dtype(dt)
        out.append(Variant(f"fd sumsq {n}", _sumsq_kernel, {"table": "*i64", "x": f"*{n}", "part": f"*{_NAME[acc]}"},
                           dict(fixed, VEC=_vec(dt, True), ACC=_TL[acc]), num_warps=NUM_WARPS,
                           aligned=("table", "x", "part")))
    axpy = [(torch.float32, torch.float32, _S_ARG, True), (torch.float32, torch.float32, _S_PTR, True),
            (torch.bfloat16, torch.float32, _S_ARG, True), (torch.bfloat16, torch.bfloat16, _S_ARG, True),
            (torch.float16, torch.float32, _S_ARG, True), (torch.float64, torch.float64, _S_PTR, True),
            (torch.float32, torch.float32, _S_ARG, False)]
    for dt, dv, mode, aligned in axpy:
        acc = acc_dtype(dt)
        sig = {"table": "*i64", "theta": f"*{_NAME[dt]}", "v": f"*{_NAME[dv]}", "out": f"*{_NAME[dt]}", "s": "fp32"}
        cx = dict(fixed, VEC_T=_vec(dt, aligned), VEC_V=_vec(dv, aligned), VEC_O=_vec(dt, aligned), MODE=mode,
                  ACC=_TL[acc])
        if mode == _S_PTR:
            sig["s_ptr"] = f"*{_NAME[acc]}"
        else:
            cx["s_ptr"] = None
        name = (f"fd axpy θ={_NAME[dt]} v={_NAME[dv]} α={'float' if mode == _S_ARG else 'device'}"
                + ("" if aligned else " unaligned"))
        out.append(Variant(name, _axpy_kernel, sig, cx, num_warps=NUM_WARPS,
                           aligned=tuple(k for k in sig if k in ("table", "s_ptr") or aligned and k != "s")))
    combos = [(torch.float32, _S_ARG), (torch.float32, _S_DIV), (torch.bfloat16, _S_ARG), (torch.float16, _S_ARG),
              (torch.float64, _S_PTR)]
    for dt, mode in combos:
        acc = acc_dtype(dt)
        n = _NAME[dt]
        sig = {"table": "*i64", "d": f"*{n}", "p": f"*{n}", "m": f"*{n}", "out": f"*{_NAME[acc]}", "s": "fp32"}
        cx = dict(fixed, VEC_D=_vec(dt, True), VEC_P=_vec(dt, True), VEC_M=_vec(dt, True), VEC_O=_vec(acc, True),
                  HAS_D=True, HAS_P=True, HAS_M=True, MODE=mode, ACC=_TL[acc])
        if mode == _S_ARG:
            cx["s_ptr"] = None
        else:
            sig["s_ptr"] = f"*{_NAME[acc]}"
        label = {_S_ARG: "float", _S_DIV: "device ε", _S_PTR: "device"}[mode]
        out.append(Variant(f"fd combine {n} coef={label}", _combine_kernel, sig, cx, num_warps=NUM_WARPS,
                           aligned=tuple(k for k in sig if k != "s")))
    return out
