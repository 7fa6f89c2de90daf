"""Fused residual bottleneck adapter in Triton: y = x + W_up · g(W_down · x + b_down) + b_up.

Layout follows Liger-Kernel's ``ops/``: private ``@triton.jit`` kernels, Python launchers, and an
``autograd.Function`` (:class:`FusedBottleneckAdapter`). The plain-torch reference is
:func:`negint_ds.kernels.adapter_reference.bottleneck_adapter_reference`.

Forward (one kernel): each program owns ``BLOCK_M`` token rows; it computes z = x W_downᵀ + b_down for
all b bottleneck units (kept on chip, b ≤ 512), h = g(z), then for each ``BLOCK_N`` slice of the output
y = x + h W_upᵀ + b_up. x is read twice (the second read hits L2) and y written once; z and h never
reach memory.

Backward: saved for backward are x and the weights only — the activation is recomputed. One
row-parallel kernel recomputes z and h, forms dh = dy W_up, dz = dh ⊙ g'(z) and dx = dy + dz W_down, and
writes dx, h and dz; the weight and bias gradients are reductions over tokens and go to cuBLAS:
dW_up = dyᵀ h, db_up = Σ dy, dW_down = dzᵀ x, db_down = Σ dz. The backward is not differentiable again
(``once_differentiable``): second-order code (the exact meta hypergradient) runs the torch reference
instead (see :func:`negint_ds.kernels.reference_only`).

Shapes: x (..., d) any float dtype (fp32, fp16, bf16), contiguous or strided in its last two dims;
W_down (b, d), b_down (b,), W_up (d, b), b_up (d,) of x's dtype; any d and b (masked tiles; b ≤ 512
so that z fits on chip). Matmuls accumulate in fp32 (fp32 inputs use IEEE fp32, not TF32).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

MAX_BOTTLENECK = 512


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
def _down_projection(x_ptr, wd_ptr, bd_ptr, rows, row_mask, D, B, sx_m, sx_d, swd_b, swd_d,
                     BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr, PREC: tl.constexpr):
    """z = x[rows] W_downᵀ + b_down as a (BLOCK_M, BLOCK_B) fp32 tile (columns ≥ B are zero)."""
    cols_b = tl.arange(0, BLOCK_B)
    mask_b = cols_b < B
    z = tl.zeros((BLOCK_M, BLOCK_B), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        mask_k = ks < D
        xt = tl.load(x_ptr + rows[:, None] * sx_m + ks[None, :] * sx_d, mask=row_mask[:, None] & mask_k[None, :],
                     other=0.0)
        wt = tl.load(wd_ptr + cols_b[None, :] * swd_b + ks[:, None] * swd_d, mask=mask_k[:, None] & mask_b[None, :],
                     other=0.0)  # (BLOCK_K, BLOCK_B) = W_downᵀ slice
        z += tl.dot(xt, wt, input_precision=PREC)
    bias = tl.load(bd_ptr + cols_b, mask=mask_b, other=0.0).to(tl.float32)
    return z + bias[None, :]


@triton.jit
def _adapter_fwd_kernel(x_ptr, wd_ptr, bd_ptr, wu_ptr, bu_ptr, y_ptr, T, D, B,
                        sx_m, sx_d, swd_b, swd_d, swu_d, swu_b, sy_m, sy_d,
                        ACT: tl.constexpr, PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # T·d may exceed 2³¹
    row_mask = rows < T
    z = _down_projection(x_ptr, wd_ptr, bd_ptr, rows, row_mask, D, B, sx_m, sx_d, swd_b, swd_d,
                         BLOCK_M, BLOCK_K, BLOCK_B, PREC)
    h = _act(z, ACT).to(x_ptr.dtype.element_ty)  # (BLOCK_M, BLOCK_B), zero in padded columns
    cols_b = tl.arange(0, BLOCK_B)
    mask_b = cols_b < B
    for n0 in range(0, D, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        mask_n = ns < D
        wt = tl.load(wu_ptr + ns[None, :] * swu_d + cols_b[:, None] * swu_b, mask=mask_b[:, None] & mask_n[None, :],
                     other=0.0)  # (BLOCK_B, BLOCK_N) = W_upᵀ slice
        acc = tl.dot(h, wt, input_precision=PREC)
        m2 = row_mask[:, None] & mask_n[None, :]
        xt = tl.load(x_ptr + rows[:, None] * sx_m + ns[None, :] * sx_d, mask=m2, other=0.0)
        bias = tl.load(bu_ptr + ns, mask=mask_n, other=0.0).to(tl.float32)
        acc += xt.to(tl.float32) + bias[None, :]
        tl.store(y_ptr + rows[:, None] * sy_m + ns[None, :] * sy_d, acc.to(y_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _adapter_bwd_rows_kernel(x_ptr, dy_ptr, wd_ptr, bd_ptr, wu_ptr, dx_ptr, h_ptr, dz_ptr, T, D, B,
                             sx_m, sx_d, sdy_m, sdy_d, swd_b, swd_d, swu_d, swu_b,
                             ACT: tl.constexpr, PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                             BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # T·d may exceed 2³¹
    row_mask = rows < T
    cols_b = tl.arange(0, BLOCK_B)
    mask_b = cols_b < B
    z = _down_projection(x_ptr, wd_ptr, bd_ptr, rows, row_mask, D, B, sx_m, sx_d, swd_b, swd_d,
                         BLOCK_M, BLOCK_K, BLOCK_B, PREC)  # recomputed, never stored by the forward
    dh = tl.zeros((BLOCK_M, BLOCK_B), dtype=tl.float32)
    for n0 in range(0, D, BLOCK_N):  # dh = dy W_up
        ns = n0 + tl.arange(0, BLOCK_N)
        mask_n = ns < D
        dyt = tl.load(dy_ptr + rows[:, None] * sdy_m + ns[None, :] * sdy_d,
                      mask=row_mask[:, None] & mask_n[None, :], other=0.0)
        wt = tl.load(wu_ptr + ns[:, None] * swu_d + cols_b[None, :] * swu_b, mask=mask_n[:, None] & mask_b[None, :],
                     other=0.0)  # (BLOCK_N, BLOCK_B) slice of W_up
        dh += tl.dot(dyt, wt, input_precision=PREC)
    dz = dh * _act_grad(z, ACT)
    hb = tl.arange(0, BLOCK_B)
    mhb = row_mask[:, None] & mask_b[None, :]
    tl.store(h_ptr + rows[:, None] * B + hb[None, :], _act(z, ACT).to(h_ptr.dtype.element_ty), mask=mhb)
    dz_lo = dz.to(dz_ptr.dtype.element_ty)
    tl.store(dz_ptr + rows[:, None] * B + hb[None, :], dz_lo, mask=mhb)
    for n0 in range(0, D, BLOCK_N):  # dx = dy + dz W_down
        ns = n0 + tl.arange(0, BLOCK_N)
        mask_n = ns < D
        m2 = row_mask[:, None] & mask_n[None, :]
        wt = tl.load(wd_ptr + cols_b[:, None] * swd_b + ns[None, :] * swd_d, mask=mask_b[:, None] & mask_n[None, :],
                     other=0.0)  # (BLOCK_B, BLOCK_N) slice of W_down
        acc = tl.dot(dz_lo, wt, input_precision=PREC)
        dyt = tl.load(dy_ptr + rows[:, None] * sdy_m + ns[None, :] * sdy_d, mask=m2, other=0.0)
        acc += dyt.to(tl.float32)
        tl.store(dx_ptr + rows[:, None] * D + ns[None, :], acc.to(dx_ptr.dtype.element_ty), mask=m2)


def _config(d: int, b: int) -> dict:
    """Tile sizes: on-chip z is BLOCK_M × next_pow2(b) fp32, so fewer rows for wider bottlenecks.

    A heuristic until autotuned on a GPU (see kernels/bench/bench_adapter.py).
    """
    block_b = max(16, triton.next_power_of_2(b))
    block_m = 64 if block_b <= 128 else (32 if block_b <= 256 else 16)
    return dict(BLOCK_M=block_m, BLOCK_K=64, BLOCK_B=block_b, BLOCK_N=64, num_warps=4 if block_b <= 128 else 8)


def unsupported(x, w_down, b_down, w_up, b_up, activation) -> str | None:
    """Why the fused kernel cannot take these inputs, or None if it can (the single source of this rule)."""
    d, b = x.shape[-1], w_down.shape[0]
    if activation not in ("gelu", "relu"):
        return f"activation must be 'gelu' or 'relu', got {activation!r}"
    if w_down.shape != (b, d) or w_up.shape != (d, b) or b_down.shape != (b,) or b_up.shape != (d,):
        return (f"adapter shapes do not match: x (..., {d}), w_down {tuple(w_down.shape)}, b_down "
                f"{tuple(b_down.shape)}, w_up {tuple(w_up.shape)}, b_up {tuple(b_up.shape)}")
    if b > MAX_BOTTLENECK:
        return f"fused adapter supports a bottleneck of at most {MAX_BOTTLENECK}, got {b}"
    if len({t.dtype for t in (x, w_down, b_down, w_up, b_up)}) != 1:
        return "fused adapter needs x and all weights in one dtype"
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"fused adapter supports fp32, fp16 and bf16, got {x.dtype}"
    if len({t.device for t in (x, w_down, b_down, w_up, b_up)}) != 1:
        return "fused adapter needs x and all weights on one device"
    return None


def _check(x, w_down, b_down, w_up, b_up, activation):
    why = unsupported(x, w_down, b_down, w_up, b_up, activation)
    if why is not None:
        raise ValueError(why)


def _prec(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def adapter_forward(x2: torch.Tensor, w_down, b_down, w_up, b_up, activation: str) -> torch.Tensor:
    """Launch the forward kernel on a 2-D x2 (T, d) already accepted by :func:`unsupported`.

    Returns y (T, d), contiguous, x2's dtype. Runs on CUDA, or on CPU under ``TRITON_INTERPRET=1``.
    """
    T, d = x2.shape
    b = w_down.shape[0]
    y = torch.empty((T, d), dtype=x2.dtype, device=x2.device)
    cfg = _config(d, b)
    grid = (triton.cdiv(T, cfg["BLOCK_M"]),)
    _adapter_fwd_kernel[grid](x2, w_down, b_down, w_up, b_up, y, T, d, b, x2.stride(0), x2.stride(1),
                              w_down.stride(0), w_down.stride(1), w_up.stride(0), w_up.stride(1), y.stride(0),
                              y.stride(1), ACT=0 if activation == "gelu" else 1, PREC=_prec(x2.dtype), **cfg)
    return y


def adapter_backward(x2, dy2, w_down, b_down, w_up, activation: str):
    """Launch the backward for 2-D x2, dy2 (T, d): returns (dx (T, d), dW_down (b, d), db_down (b,),
    dW_up (d, b), db_up (d,)), all in x2's dtype (fp32 accumulation inside)."""
    T, d = x2.shape
    b = w_down.shape[0]
    dx = torch.empty((T, d), dtype=x2.dtype, device=x2.device)
    h = torch.empty((T, b), dtype=x2.dtype, device=x2.device)
    dz = torch.empty((T, b), dtype=x2.dtype, device=x2.device)
    cfg = _config(d, b)
    grid = (triton.cdiv(T, cfg["BLOCK_M"]),)
    _adapter_bwd_rows_kernel[grid](x2, dy2, w_down, b_down, w_up, dx, h, dz, T, d, b, x2.stride(0), x2.stride(1),
                                   dy2.stride(0), dy2.stride(1), w_down.stride(0), w_down.stride(1), w_up.stride(0),
                                   w_up.stride(1), ACT=0 if activation == "gelu" else 1, PREC=_prec(x2.dtype),
                                   **cfg)
    dw_up = dy2.t().mm(h)  # (d, b): reductions over tokens go to cuBLAS
    dw_down = dz.t().mm(x2)  # (b, d)
    db_up = dy2.sum(0, dtype=torch.float32).to(dy2.dtype)
    db_down = dz.sum(0, dtype=torch.float32).to(dz.dtype)
    return dx, dw_down, db_down, dw_up, db_up


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
        dx, dwd, dbd, dwu, dbu = adapter_backward(x2, dy2, w_down, b_down, w_up, ctx.activation)
        return dx.view(ctx.shape), dwd, dbd, dwu, dbu, None


def bottleneck_adapter_triton(x: torch.Tensor, w_down: torch.Tensor, b_down: torch.Tensor, w_up: torch.Tensor,
                              b_up: torch.Tensor, activation: str = "gelu") -> torch.Tensor:
    """Fused adapter with autograd; same signature and result as the reference.

    Raises:
        ValueError: unknown activation, mismatched shapes or dtypes, or a bottleneck above 512.
    """
    return FusedBottleneckAdapter.apply(x, w_down, b_down, w_up, b_up, activation)
