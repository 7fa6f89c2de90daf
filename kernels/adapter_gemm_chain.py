"""Bottleneck adapter as a chain of cuBLAS(Lt) GEMMs with fused epilogues: y = x + W_up·g(W_down·x + b_down) + b_up.

The GEMM-epilogue alternative to the fused Triton kernel (:mod:`negint_ds.kernels.adapter_triton`). At
d ≥ 1024 the adapter is compute-bound (14·N·d·b FLOPs against ~10·N·d bytes in bf16), so large
vendor GEMMs with the cheap work folded into their epilogues can compete; at set-up the dispatcher times
this chain against the fused Triton path for each such shape and uses the faster
(:func:`negint_ds.kernels.dispatch.self_check`). ``torch.compile(mode="max-autotune")`` is the third
baseline in ``kernels/bench/bench_adapter.py``; in training it applies through ``train.compile``.

This mirrors what apex's ``FusedDenseGeluDense`` (``apex.fused_dense``) and TransformerEngine's fused
GEMMs (``general_gemm`` with bias / GELU / bias-gradient epilogues, used by ``LayerNormMLP``) do, but
only where the epilogue is *exact* for this adapter:

* bias fused into the GEMM: z = ``torch.addmm(b_down, x, W_downᵀ)`` (cuBLASLt ``BIAS`` epilogue: the bias
  is added to the fp32 accumulator before the one rounding, as ``F.linear`` does);
* ReLU fused too: ``torch._addmm_activation(b_down, x, W_downᵀ, use_gelu=False)`` (``RELU_BIAS``);
  relu(round(a)) = round(relu(a)), so this is bit-identical to the unfused form;
* **GELU is not fused**: cuBLASLt's ``GELU`` epilogue (and ``_addmm_activation(use_gelu=True)``, and
  apex/TE's GELU epilogues) compute the tanh approximation, while this adapter uses the exact erf GELU
  (``F.gelu``, as the reference and the Triton kernel). So h = ``F.gelu(z)`` runs as its own pass over the
  (N, b) tensor — a quarter of x's size for b = d/4;
* residual fused into the up-projection: y = x + b_up is written by one elementwise pass, then
  ``y.addmm_(h, W_upᵀ)`` accumulates the GEMM into it (beta = 1: cuBLAS reads C = x + b_up in its
  epilogue), so no (N, d) intermediate h·W_upᵀ is ever stored.

Backward (:class:`GemmChainAdapter`), where z (gelu) or h (relu) was saved by the forward (or recomputed
with ``recompute=True``, saving only x and the weights):

* dh = dy·W_up (GEMM), dz = dh ⊙ g'(z) (``aten.gelu_backward`` / ``aten.threshold_backward``: one
  elementwise pass, fp32 internally, the same ops autograd runs for the reference);
* dx = ``torch.addmm(dy, dz, W_down)``: the residual's dy fused as the GEMM's C (beta = 1);
* dW_up = dyᵀ·h, dW_down = dzᵀ·x (GEMMs reducing over tokens), db_up = Σ dy, db_down = Σ dz;
* ``ctx.needs_input_grad`` decides which of these run: frozen weights skip their weight-gradient GEMMs
  and bias sums; without grads for x, W_down and b_down, dh/dz/dx are not formed at all.

The backward is not differentiable again (``once_differentiable``): second-order code (the exact meta
hypergradient) runs the torch reference (see :func:`negint_ds.kernels.reference_only`).

Works on any device torch's GEMMs run on (CPU included, where there are no epilogues but the same math).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .adapter_reference import check_adapter_args

_HAS_ADDMM_ACTIVATION = hasattr(torch, "_addmm_activation")  # private op, present since torch 1.13


def _down(x2: torch.Tensor, w_down: torch.Tensor, b_down: torch.Tensor, activation: str):
    """(z or None, h) for 2-D x2 (N, d): z = x2·W_downᵀ + b_down (N, b), h = g(z) (N, b).

    ReLU comes out of the GEMM's epilogue directly (z is not materialised: None); GELU needs z.
    """
    if activation == "relu":
        if _HAS_ADDMM_ACTIVATION:
            return None, torch._addmm_activation(b_down, x2, w_down.t(), use_gelu=False)
        return None, torch.relu(torch.addmm(b_down, x2, w_down.t()))
    z = torch.addmm(b_down, x2, w_down.t())
    return z, F.gelu(z)  # exact erf GELU: cuBLASLt's GELU epilogue is the tanh approximation


class GemmChainAdapter(torch.autograd.Function):
    """autograd wrapper of the GEMM chain; inputs as :func:`bottleneck_adapter_gemm_chain`.

    Saved for backward: x (as a 2-D view), W_down, b_down, W_up, and — unless ``recompute`` — the (N, b)
    pre-activation z (gelu) or activation h (relu), trading N·b elements of memory for the 2·N·d·b-FLOP
    recompute GEMM.
    """

    @staticmethod
    def forward(ctx, x, w_down, b_down, w_up, b_up, activation, recompute):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # a view when x's rows are evenly strided, else a copy
        z, h = _down(x2, w_down, b_down, activation)
        y = torch.add(x2, b_up)  # the one pass that writes the output: x + b_up, the up GEMM's C operand
        y.addmm_(h, w_up.t())  # y += h·W_upᵀ (beta = 1): the residual fused into the GEMM
        act_saved = None if recompute else (h if activation == "relu" else z)
        ctx.save_for_backward(x2, w_down, b_down, w_up, act_saved)
        ctx.activation, ctx.shape = activation, shape
        return y.view(shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x2, w_down, b_down, w_up, saved = ctx.saved_tensors
        need_x, need_wd, need_bd, need_wu, need_bu = ctx.needs_input_grad[:5]
        need_dz = need_x or need_wd or need_bd
        dy2 = dy.reshape(-1, ctx.shape[-1])
        relu = ctx.activation == "relu"
        z = h = None
        if need_dz or need_wu:
            if saved is None:  # recompute: the forward kept only x and the weights
                z, h = _down(x2, w_down, b_down, ctx.activation)
            elif relu:
                h = saved
            else:
                z = saved
                h = F.gelu(z) if need_wu else None
        dx = dwd = dbd = dwu = dbu = None
        if need_dz:
            dh = dy2.mm(w_up)  # (N, b)
            # the ops autograd runs for F.gelu / F.relu (fp32 math inside, one rounding), so dz matches the
            # reference's; relu'(0) = 0 as in torch
            dz = (torch.ops.aten.threshold_backward(dh, h, 0) if relu
                  else torch.ops.aten.gelu_backward(dh, z, approximate="none"))
            if need_x:
                dx = torch.addmm(dy2, dz, w_down).view(ctx.shape)  # dy + dz·W_down: residual as C (beta = 1)
            if need_wd:
                dwd = dz.t().mm(x2)  # (b, d)
            if need_bd:
                dbd = dz.sum(0)
        if need_wu:
            dwu = dy2.t().mm(h)  # (d, b)
        if need_bu:
            dbu = dy2.sum(0)
        return dx, dwd, dbd, dwu, dbu, None, None


def bottleneck_adapter_gemm_chain(x: torch.Tensor, w_down: torch.Tensor, b_down: torch.Tensor, w_up: torch.Tensor,
                                  b_up: torch.Tensor, activation: str = "gelu", *,
                                  recompute: bool = False) -> torch.Tensor:
    """Residual bottleneck adapter as cuBLAS(Lt) GEMMs with fused epilogues; same result as the reference.

    Args:
        x: (..., d) activations; any float dtype torch's GEMMs take (fp32, fp16, bf16; fp64 too), any strides.
        w_down: (b, d), b_down: (b,) down-projection; w_up: (d, b), b_up: (d,) up-projection; x's dtype
            and device.
        activation: ``"gelu"`` (exact erf form) or ``"relu"``.
        recompute: keyword-only. False (default): save the (..., b) pre-activation (gelu) or activation
            (relu) for the backward; True: save only x and the weights and recompute it (one more GEMM).

    Returns:
        (..., d) tensor of x's dtype (contiguous), differentiable once w.r.t. x and all four weights.

    Raises:
        ValueError: unknown activation or mismatched shapes (the reference's messages).
        RuntimeError: (from torch's GEMMs) x and the weights in different dtypes or on different devices; the
            chain is not autocast-aware — its in-place residual GEMM needs one dtype throughout.
    """
    check_adapter_args(x, w_down, b_down, w_up, b_up, activation)
    return GemmChainAdapter.apply(x, w_down, b_down, w_up, b_up, activation, bool(recompute))
