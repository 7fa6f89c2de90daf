"""Fused residual bottleneck adapter in Triton: y = x + W_up · g(W_down · x + b_down) + b_up.

Layout follows Liger-Kernel's ``ops/``: private ``@triton.jit`` kernels, Python launchers, and an
``autograd.Function`` (:class:`FusedBottleneckAdapter`). The plain-torch reference is
:func:`negint_ds.kernels.adapter_reference.bottleneck_adapter_reference`; the tile tables live in
:mod:`negint_ds.kernels.adapter_configs` (one place for what the dispatcher may launch, which the
ahead-of-time report compiles for sm_90a).

Traffic, in U = T·d·e bytes (T tokens, e bytes per element; the weights are small and stay in L2):

* **Forward** (one kernel, persistent grid): each program walks row tiles of ``BLOCK_M`` tokens; per tile it
  computes z = x W_downᵀ + b_down for all b units in registers (b ≤ 512), h = g(z), then y = x + h W_upᵀ + b_up
  one ``BLOCK_N`` column slice at a time. DRAM: read x, write y = 2U (x's second read, for the residual,
  is of the tile just loaded and hits L2).
* **Backward, row kernel**: per row tile, recompute z, store h = g(z) (T·b, ¼U at b = d/4), keep g'(z) in the
  storage dtype (this frees z's fp32 registers before dh accumulates), dh = dy W_up, dz = dh ⊙ g'(z)
  (stored, ¼U), dx = dy + dz W_down. DRAM: read x, dy, write dx, h, dz = 3.5U.
* **Backward, weight kernel** (one launch, split over tokens): programs ``(kind, b-slice, d-slice, split)``
  accumulate dW_up[d-slice] = dyᵀ h and db_up = Σ dy, or dW_down[:, d-slice] = dzᵀ x and db_down = Σ dz, into
  fp32 partials per split; a second stage sums the splits in a fixed order (deterministic, no atomics).
  DRAM: read dy, x once, h and dz once per d-slice (mostly from L2: the d-slices of one split run together)
  ≈ 2.5U, plus 2·S·d·b·4 bytes of partials. ``ctx.needs_input_grad`` decides which kinds run, whether h/dz
  are stored and whether dx is written.

Total forward+backward ≈ 8U against the 5U minimum; the roofline is max(bytes / bandwidth, FLOPs / peak)
(``kernels/bench/roofline.py``): 14·T·d·b FLOPs with the recompute, which dominates from d ≈ 1024 in bf16.

The backward is not differentiable again (``once_differentiable``): second-order code (the exact meta
hypergradient) runs the torch reference (see :func:`negint_ds.kernels.reference_only`).

Shapes: x (..., d) fp32, fp16 or bf16 (its rows may be strided; a non-unit last-dim stride is copied), W_down
(b, d), b_down (b,), W_up (d, b), b_up (d,) of x's dtype, b ≤ 512. Matmuls accumulate in fp32 (fp32 inputs
use IEEE fp32 dots, not TF32).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from . import adapter_configs as C
from .adapter_reference import check_adapter_args

MAX_BOTTLENECK = C.MAX_BOTTLENECK


@triton.jit
def _act(z, ACT: tl.constexpr):
    if ACT == 0:  # exact (erf) GELU, as torch.nn.functional.gelu
        return 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
    else:
        return tl.maximum(z, 0.0)


@triton.jit
def _act_grad(z, ACT: tl.constexpr):
    if ACT == 0:
        cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
        return cdf + z * 0.3989422804014327 * tl.exp(-0.5 * z * z)
    else:
        return (z > 0.0).to(tl.float32)


@triton.jit
def _down_projection(x_tile, wd_ptr, bd_ptr, rows, row_mask, D, B, sx_m,
                     BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr, PREC: tl.constexpr):
    """z = x[rows] W_downᵀ + b_down as a (BLOCK_M, BLOCK_B) fp32 tile (columns ≥ B are zero).

    ``x_tile`` points at the tile's first row and ``rows`` are local (int32): per-element offsets stay 32-bit
    (a tile is far below 2³¹ elements) while the 64-bit tile base covers T·d ≥ 2³¹."""
    cols_b = tl.arange(0, BLOCK_B)
    mask_b = cols_b < B
    z = tl.zeros((BLOCK_M, BLOCK_B), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = tl.max_contiguous(tl.multiple_of(k0 + tl.arange(0, BLOCK_K), BLOCK_K), BLOCK_K)
        mask_k = ks < D
        xt = tl.load(x_tile + rows[:, None] * sx_m + ks[None, :], mask=row_mask[:, None] & mask_k[None, :], other=0.0)
        wt = tl.load(wd_ptr + cols_b[None, :] * D + ks[:, None], mask=mask_k[:, None] & mask_b[None, :],
                     other=0.0)  # (BLOCK_K, BLOCK_B) = W_downᵀ slice
        z += tl.dot(xt, wt, input_precision=PREC)
    bias = tl.load(bd_ptr + cols_b, mask=mask_b, other=0.0).to(tl.float32)
    return z + bias[None, :]


@triton.jit
def _adapter_fwd_kernel(x_ptr, wd_ptr, bd_ptr, wu_ptr, bu_ptr, y_ptr, T, D, B, sx_m, sy_m,
                        ACT: tl.constexpr, PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    cols_b = tl.arange(0, BLOCK_B)
    mask_b = cols_b < B
    for tile in range(tl.program_id(0), tl.cdiv(T, BLOCK_M), tl.num_programs(0)):  # persistent grid
        first = tl.cast(tile, tl.int64) * BLOCK_M  # T·d may exceed 2³¹: 64-bit tile bases, 32-bit offsets within
        x_tile, y_tile = x_ptr + first * sx_m, y_ptr + first * sy_m
        rows = tl.arange(0, BLOCK_M)
        row_mask = rows < tl.minimum(T - first, BLOCK_M).to(tl.int32)
        z = _down_projection(x_tile, wd_ptr, bd_ptr, rows, row_mask, D, B, sx_m, BLOCK_M, BLOCK_K, BLOCK_B, PREC)
        h = _act(z, ACT).to(x_ptr.dtype.element_ty)  # (BLOCK_M, BLOCK_B), zero in padded columns
        for n0 in range(0, D, BLOCK_N):
            ns = tl.max_contiguous(tl.multiple_of(n0 + tl.arange(0, BLOCK_N), BLOCK_N), BLOCK_N)
            mask_n = ns < D
            wt = tl.load(wu_ptr + ns[None, :] * B + cols_b[:, None], mask=mask_b[:, None] & mask_n[None, :],
                         other=0.0)  # (BLOCK_B, BLOCK_N) = W_upᵀ slice
            acc = tl.dot(h, wt, input_precision=PREC)
            m2 = row_mask[:, None] & mask_n[None, :]
            xt = tl.load(x_tile + rows[:, None] * sx_m + ns[None, :], mask=m2, other=0.0)
            bias = tl.load(bu_ptr + ns, mask=mask_n, other=0.0).to(tl.float32)
            acc += xt.to(tl.float32) + bias[None, :]
            tl.store(y_tile + rows[:, None] * sy_m + ns[None, :], acc.to(y_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _adapter_bwd_rows_kernel(x_ptr, dy_ptr, wd_ptr, bd_ptr, wu_ptr, dx_ptr, h_ptr, dz_ptr, T, D, B, sx_m, sdy_m,
                             ACT: tl.constexpr, PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                             BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, WRITE_DX: tl.constexpr,
                             WRITE_H: tl.constexpr, WRITE_DZ: tl.constexpr):
    cols_b = tl.arange(0, BLOCK_B)
    mask_b = cols_b < B
    for tile in range(tl.program_id(0), tl.cdiv(T, BLOCK_M), tl.num_programs(0)):  # persistent grid
        first = tl.cast(tile, tl.int64) * BLOCK_M
        x_tile, dy_tile, dx_tile = x_ptr + first * sx_m, dy_ptr + first * sdy_m, dx_ptr + first * D
        h_tile, dz_tile = h_ptr + first * B, dz_ptr + first * B
        rows = tl.arange(0, BLOCK_M)
        row_mask = rows < tl.minimum(T - first, BLOCK_M).to(tl.int32)
        mhb = row_mask[:, None] & mask_b[None, :]
        z = _down_projection(x_tile, wd_ptr, bd_ptr, rows, row_mask, D, B, sx_m, BLOCK_M, BLOCK_K, BLOCK_B, PREC)
        if WRITE_H:
            tl.store(h_tile + rows[:, None] * B + cols_b[None, :], _act(z, ACT).to(h_ptr.dtype.element_ty), mask=mhb)
        # g'(z) in the storage dtype: z's fp32 tile dies here, so it and dh are never live together
        gp = _act_grad(z, ACT).to(x_ptr.dtype.element_ty)
        dh = tl.zeros((BLOCK_M, BLOCK_B), dtype=tl.float32)
        for n0 in range(0, D, BLOCK_N):  # dh = dy W_up
            ns = tl.max_contiguous(tl.multiple_of(n0 + tl.arange(0, BLOCK_N), BLOCK_N), BLOCK_N)
            mask_n = ns < D
            dyt = tl.load(dy_tile + rows[:, None] * sdy_m + ns[None, :], mask=row_mask[:, None] & mask_n[None, :],
                          other=0.0)
            wt = tl.load(wu_ptr + ns[:, None] * B + cols_b[None, :], mask=mask_n[:, None] & mask_b[None, :],
                         other=0.0)  # (BLOCK_N, BLOCK_B) slice of W_up
            dh += tl.dot(dyt, wt, input_precision=PREC)
        dz = (dh * gp.to(tl.float32)).to(x_ptr.dtype.element_ty)
        if WRITE_DZ:
            tl.store(dz_tile + rows[:, None] * B + cols_b[None, :], dz, mask=mhb)
        if WRITE_DX:
            for n0 in range(0, D, BLOCK_N):  # dx = dy + dz W_down
                ns = tl.max_contiguous(tl.multiple_of(n0 + tl.arange(0, BLOCK_N), BLOCK_N), BLOCK_N)
                mask_n = ns < D
                m2 = row_mask[:, None] & mask_n[None, :]
                wt = tl.load(wd_ptr + cols_b[:, None] * D + ns[None, :], mask=mask_b[:, None] & mask_n[None, :],
                             other=0.0)  # (BLOCK_B, BLOCK_N) slice of W_down
                acc = tl.dot(dz, wt, input_precision=PREC)
                dyt = tl.load(dy_tile + rows[:, None] * sdy_m + ns[None, :], mask=m2, other=0.0)
                acc += dyt.to(tl.float32)
                tl.store(dx_tile + rows[:, None] * D + ns[None, :], acc.to(dx_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _wide_t_narrow(w_ptr, n_ptr, sw_m, t0, t1, ds, mask_d, bs, mask_b, B,
                   BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_BS: tl.constexpr, PREC: tl.constexpr):
    """Σ over tokens [t0, t1) of W[t, ds]ᵀ N[t, bs] → (BLOCK_D, BLOCK_BS) fp32, with Σ W[t, ds] and Σ N[t, bs]."""
    acc = tl.zeros((BLOCK_D, BLOCK_BS), dtype=tl.float32)
    sum_w = tl.zeros((BLOCK_D,), dtype=tl.float32)
    sum_n = tl.zeros((BLOCK_BS,), dtype=tl.float32)
    ts = tl.arange(0, BLOCK_T)
    for s in range(t0, t1, BLOCK_T):
        mask_t = s + ts < t1
        w_blk, n_blk = w_ptr + tl.cast(s, tl.int64) * sw_m, n_ptr + tl.cast(s, tl.int64) * B
        wt = tl.load(w_blk + ts[:, None] * sw_m + ds[None, :], mask=mask_t[:, None] & mask_d[None, :], other=0.0)
        nt = tl.load(n_blk + ts[:, None] * B + bs[None, :], mask=mask_t[:, None] & mask_b[None, :], other=0.0)
        acc += tl.dot(tl.trans(wt), nt, input_precision=PREC)
        sum_w += tl.sum(wt.to(tl.float32), axis=0)
        sum_n += tl.sum(nt.to(tl.float32), axis=0)
    return acc, sum_w, sum_n


@triton.jit
def _adapter_bwd_weights_kernel(x_ptr, dy_ptr, h_ptr, dz_ptr, dwu_part, dwd_part, dbu_part, dbd_part,
                                T, D, B, sx_m, sdy_m, TOKENS_PER_SPLIT,
                                PREC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                                BLOCK_BS: tl.constexpr, DO_UP: tl.constexpr, DO_DOWN: tl.constexpr):
    # program (kind · b-slice · d-slice, split): the slices of one split are adjacent ids, so they run together
    # and share that token range's x, dy, h and dz in L2. BLOCK_BS ≤ 128 bounds the accumulator's registers.
    n_d = tl.cdiv(D, BLOCK_D)
    n_b = tl.cdiv(B, BLOCK_BS)
    pid = tl.program_id(0)
    split = tl.program_id(1)
    kind = pid // (n_d * n_b) if DO_UP and DO_DOWN else (0 if DO_UP else 1)  # 0: dW_up, db_up  1: dW_down, db_down
    dslice = pid % n_d
    bslice = (pid // n_d) % n_b
    ds = tl.max_contiguous(tl.multiple_of(dslice * BLOCK_D + tl.arange(0, BLOCK_D), BLOCK_D), BLOCK_D)
    mask_d = ds < D
    bs = bslice * BLOCK_BS + tl.arange(0, BLOCK_BS)
    mask_b = bs < B
    t0 = split * TOKENS_PER_SPLIT
    t1 = tl.minimum(t0 + TOKENS_PER_SPLIT, T)
    part = split.to(tl.int64) * D * B
    if kind == 0:  # dW_up (D, B) = dyᵀ h
        acc, sum_w, sum_n = _wide_t_narrow(dy_ptr, h_ptr, sdy_m, t0, t1, ds, mask_d, bs, mask_b, B, BLOCK_T, BLOCK_D,
                                           BLOCK_BS, PREC)
        tl.store(dwu_part + part + ds[:, None] * B + bs[None, :], acc, mask=mask_d[:, None] & mask_b[None, :])
        if bslice == 0:
            tl.store(dbu_part + split.to(tl.int64) * D + ds, sum_w, mask=mask_d)
    else:  # dW_down (B, D) = dzᵀ x, stored transposed from the (BLOCK_D, BLOCK_BS) tile
        acc, sum_w, sum_n = _wide_t_narrow(x_ptr, dz_ptr, sx_m, t0, t1, ds, mask_d, bs, mask_b, B, BLOCK_T, BLOCK_D,
                                           BLOCK_BS, PREC)
        tl.store(dwd_part + part + bs[None, :] * D + ds[:, None], acc, mask=mask_d[:, None] & mask_b[None, :])
        if dslice == 0:
            tl.store(dbd_part + split.to(tl.int64) * B + bs, sum_n, mask=mask_b)


# ----------------------------------------------------------------------------------------------- launchers
def unsupported(x, w_down, b_down, w_up, b_up, activation) -> str | None:
    """Why the fused kernel cannot take these inputs, or None if it can (the single source of this rule).

    Beyond shapes and dtypes, the tile tables must hold a configuration for (dtype, b) that fits the
    device's shared memory (see :func:`negint_ds.kernels.adapter_configs.fits`).
    """
    try:
        check_adapter_args(x, w_down, b_down, w_up, b_up, activation)
    except ValueError as e:
        return str(e)
    b = w_down.shape[0]
    if b > MAX_BOTTLENECK:
        return f"fused adapter supports a bottleneck of at most {MAX_BOTTLENECK}, got {b}"
    if len({t.dtype for t in (x, w_down, b_down, w_up, b_up)}) != 1:
        return "fused adapter needs x and all weights in one dtype"
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"fused adapter supports fp32, fp16 and bf16, got {x.dtype}"
    if len({t.device for t in (x, w_down, b_down, w_up, b_up)}) != 1:
        return "fused adapter needs x and all weights on one device"
    return C.fits(x.dtype, b, _smem_limit(x.device))


@functools.lru_cache(maxsize=None)
def _device_limits(index: int) -> tuple[int, int | None]:
    """(SM count, opt-in shared memory per block in bytes) of CUDA device ``index``, read once."""
    props = torch.cuda.get_device_properties(index)
    return props.multi_processor_count, getattr(props, "shared_memory_per_block_optin", None)


def _sm_count(device: torch.device) -> int:
    """SMs of a CUDA device; 2 "SMs" when interpreting on CPU (a small persistent grid)."""
    return _device_limits(device.index if device.index is not None else torch.cuda.current_device())[0] \
        if device.type == "cuda" else 2


def _smem_limit(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return _device_limits(device.index if device.index is not None else torch.cuda.current_device())[1]


def _check(x, w_down, b_down, w_up, b_up, activation):
    why = unsupported(x, w_down, b_down, w_up, b_up, activation)
    if why is not None:
        raise ValueError(why)


def _prec(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _rows_major(t: torch.Tensor) -> torch.Tensor:
    """t with unit stride in its last dimension (copied only if it is not): the kernels index columns densely."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _programs(device: torch.device, tiles: int, per_sm: int = 2) -> int:
    """A persistent grid: at most ``per_sm`` programs per SM, never more than there are tiles."""
    return max(1, min(tiles, _sm_count(device) * per_sm))


# read once, like Triton's @jit, which decides at decoration (import) time whether kernels are interpreted
_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_TUNED: dict[tuple, object] = {}


def _tuned(kernel, dtype: torch.dtype, b: int, cands: list) -> object | None:
    """``@triton.autotune`` over the table's candidates, keyed on (D, B) and the tensors' dtypes (Triton adds
    those to the key), built once per (kernel, precision, BLOCK_B); None where there is nothing to tune
    (one candidate, or the CPU interpreter, which would time Python)."""
    if len(cands) < 2 or _INTERPRETING:
        return None
    key = (kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__, C.precision_class(dtype), C.block_b(b))
    if key not in _TUNED:
        configs = [triton.Config({"BLOCK_M": c.block_m, "BLOCK_K": c.block_k, "BLOCK_N": c.block_n},
                                 num_warps=c.num_warps, num_stages=c.num_stages) for c in cands]
        _TUNED[key] = triton.autotune(configs=configs, key=["D", "B"])(kernel)
    return _TUNED[key]


def adapter_forward(x2: torch.Tensor, w_down, b_down, w_up, b_up, activation: str) -> torch.Tensor:
    """Launch the forward kernel on a 2-D x2 (T, d) already accepted by :func:`unsupported`.

    Returns y (T, d), contiguous, x2's dtype. Runs on CUDA, or on CPU under ``TRITON_INTERPRET=1``.
    """
    x2, w_down, w_up = _rows_major(x2), w_down.contiguous(), w_up.contiguous()
    T, d = x2.shape
    b = w_down.shape[0]
    y = torch.empty((T, d), dtype=x2.dtype, device=x2.device)
    if T == 0:
        return y
    cands = C.forward_candidates(x2.dtype, b)
    args = (x2, w_down, b_down, w_up, b_up, y, T, d, b, x2.stride(0), y.stride(0))
    common = dict(ACT=0 if activation == "gelu" else 1, PREC=_prec(x2.dtype), BLOCK_B=C.block_b(b))
    tuned = _tuned(_adapter_fwd_kernel, x2.dtype, b, cands)
    if tuned is not None:
        tuned[lambda meta: (_programs(x2.device, triton.cdiv(T, meta["BLOCK_M"])),)](*args, **common)
    else:
        cfg = cands[0]
        _adapter_fwd_kernel[(_programs(x2.device, triton.cdiv(T, cfg.block_m)),)](
            *args, **common, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps,
            num_stages=cfg.num_stages)
    return y


def token_splits(device: torch.device, T: int, d: int, b: int, block_t: int, block_d: int, block_bs: int) -> int:
    """How many token ranges the weight-gradient kernel sums separately (deterministically combined after).

    Enough programs to fill the GPU (≈ 2 per SM over both kinds and all d-slices), but no range shorter than
    4 token blocks, and never so many that the fp32 partials (2·S·d·b·4 bytes) exceed an eighth of x's bytes.
    """
    n_slices = triton.cdiv(d, block_d) * triton.cdiv(b, block_bs)
    want = triton.cdiv(2 * _sm_count(device), 2 * n_slices)
    by_len = max(1, T // (4 * block_t))
    by_bytes = max(1, (T * d * 2) // (8 * 2 * d * b * 4))
    return max(1, min(want, by_len, by_bytes))


def adapter_backward(x2, dy2, w_down, b_down, w_up, activation: str,
                     needs: tuple[bool, bool, bool, bool, bool] = (True,) * 5):
    """Launch the backward for 2-D x2, dy2 (T, d).

    Args:
        needs: which of (dx, dW_down, db_down, dW_up, db_up) to compute (``ctx.needs_input_grad``).

    Returns:
        (dx (T, d), dW_down (b, d), db_down (b,), dW_up (d, b), db_up (d,)) in x2's dtype (fp32 accumulation
        inside), with None for those not needed.
    """
    x2, dy2, w_down, w_up = _rows_major(x2), _rows_major(dy2), w_down.contiguous(), w_up.contiguous()
    T, d = x2.shape
    b = w_down.shape[0]
    dev, dt = x2.device, x2.dtype
    need_dx, do_down, do_up = needs[0], needs[1] or needs[2], needs[3] or needs[4]
    out = [None] * 5
    if T == 0:
        zeros = [torch.zeros_like(x2), torch.zeros_like(w_down), torch.zeros_like(b_down), torch.zeros_like(w_up),
                 torch.zeros((d,), dtype=dt, device=dev)]
        return tuple(z if n else None for z, n in zip(zeros, needs))
    if not (need_dx or do_down or do_up):
        return tuple(out)
    dx = torch.empty((T, d), dtype=dt, device=dev) if need_dx else x2  # placeholder pointer when unused
    h = torch.empty((T, b), dtype=dt, device=dev) if do_up else x2
    dz = torch.empty((T, b), dtype=dt, device=dev) if do_down else x2
    cands = C.backward_rows_candidates(dt, b)
    args = (x2, dy2, w_down, b_down, w_up, dx, h, dz, T, d, b, x2.stride(0), dy2.stride(0))
    common = dict(ACT=0 if activation == "gelu" else 1, PREC=_prec(dt), BLOCK_B=C.block_b(b), WRITE_DX=need_dx,
                  WRITE_H=do_up, WRITE_DZ=do_down)
    tuned = _tuned(_adapter_bwd_rows_kernel, dt, b, cands)
    if tuned is not None:
        tuned[lambda meta: (_programs(dev, triton.cdiv(T, meta["BLOCK_M"])),)](*args, **common)
    else:
        rc = cands[0]
        _adapter_bwd_rows_kernel[(_programs(dev, triton.cdiv(T, rc.block_m)),)](
            *args, **common, BLOCK_M=rc.block_m, BLOCK_K=rc.block_k, BLOCK_N=rc.block_n, num_warps=rc.num_warps,
            num_stages=rc.num_stages)
    if need_dx:
        out[0] = dx
    if do_up or do_down:
        wc = C.backward_weights_candidates(dt, b)[0]  # one candidate: its grid depends on the tiles
        S = token_splits(dev, T, d, b, wc.block_m, wc.block_n, wc.block_k)
        per = triton.cdiv(triton.cdiv(T, S), wc.block_m) * wc.block_m
        S = triton.cdiv(T, per)
        f32 = dict(dtype=torch.float32, device=dev)
        dwu = torch.empty((S, d, b), **f32) if do_up else None
        dbu = torch.empty((S, d), **f32) if do_up else None
        dwd = torch.empty((S, b, d), **f32) if do_down else None
        dbd = torch.empty((S, b), **f32) if do_down else None
        dummy = next(t for t in (dwu, dwd) if t is not None)
        n_slices = triton.cdiv(d, wc.block_n) * triton.cdiv(b, wc.block_k)
        grid = (n_slices * (int(do_up) + int(do_down)), S)
        _adapter_bwd_weights_kernel[grid](x2, dy2, h, dz, dwu if do_up else dummy, dwd if do_down else dummy,
                                          dbu if do_up else dummy, dbd if do_down else dummy, T, d, b,
                                          x2.stride(0), dy2.stride(0), per, PREC=_prec(dt), BLOCK_T=wc.block_m,
                                          BLOCK_D=wc.block_n, BLOCK_BS=wc.block_k, DO_UP=do_up, DO_DOWN=do_down,
                                          num_warps=wc.num_warps, num_stages=wc.num_stages)
        # second stage: a fixed-order sum over the splits (deterministic run to run)
        if do_down:
            out[1] = dwd.sum(0).to(dt) if needs[1] else None
            out[2] = dbd.sum(0).to(dt) if needs[2] else None
        if do_up:
            out[3] = dwu.sum(0).to(dt) if needs[3] else None
            out[4] = dbu.sum(0).to(dt) if needs[4] else None
    return tuple(out)


class FusedBottleneckAdapter(torch.autograd.Function):
    """autograd wrapper: forward saves x and the weights (not the activation) for backward."""

    @staticmethod
    def forward(ctx, x, w_down, b_down, w_up, b_up, activation):
        _check(x, w_down, b_down, w_up, b_up, activation)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        y = adapter_forward(x2, w_down, b_down, w_up, b_up, activation)
        ctx.save_for_backward(x2, w_down, b_down, w_up)
        ctx.activation, ctx.shape = activation, shape
        return y.view(shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x2, w_down, b_down, w_up = ctx.saved_tensors
        dy2 = dy.reshape(-1, ctx.shape[-1])
        dx, dwd, dbd, dwu, dbu = adapter_backward(x2, dy2, w_down, b_down, w_up, ctx.activation,
                                                  tuple(ctx.needs_input_grad[:5]))
        return (dx.view(ctx.shape) if dx is not None else None), dwd, dbd, dwu, dbu, None


def bottleneck_adapter_triton(x: torch.Tensor, w_down: torch.Tensor, b_down: torch.Tensor, w_up: torch.Tensor,
                              b_up: torch.Tensor, activation: str = "gelu") -> torch.Tensor:
    """Fused adapter with autograd; same signature and result as the reference.

    Raises:
        ValueError: unknown activation, mismatched shapes or dtypes, a bottleneck above 512, or no tile
            configuration that fits the device's shared memory.
    """
    return FusedBottleneckAdapter.apply(x, w_down, b_down, w_up, b_up, activation)
