"""The fused adapter as ``torch.library`` custom ops, so ``torch.compile`` traces a model through it whole.

``negint_ds::bottleneck_adapter`` (forward) and ``negint_ds::bottleneck_adapter_backward`` are opaque to
dynamo and inductor: the compiled graph holds one call per adapter instead of breaking at the environment
reads, generator construction and host conversions of the dispatch logic, which run inside the ops, eagerly,
at run time (:func:`negint_ds.kernels.dispatch.adapter_uses_triton`). Fake (meta) implementations give the
output shapes for tracing; the autograd formula saves x and the weights only (the activation is recomputed)
and asks for just the gradients autograd needs (``ctx.needs_input_grad``).

The backward op has no autograd formula of its own, so the adapter is once differentiable through these ops;
double backward (the exact meta hypergradient) goes through the reference under
:func:`negint_ds.kernels.reference_only`.
"""
from __future__ import annotations

import torch

from . import dispatch
from .adapter_reference import bottleneck_adapter_backward_reference, bottleneck_adapter_reference


@torch.library.custom_op("negint_ds::bottleneck_adapter", mutates_args=())
def bottleneck_adapter_op(x: torch.Tensor, w_down: torch.Tensor, b_down: torch.Tensor, w_up: torch.Tensor,
                          b_up: torch.Tensor, activation: str) -> torch.Tensor:
    """y = x + W_up g(W_down x + b_down) + b_up; x (..., d) → y (..., d), contiguous, x's dtype."""
    if dispatch.adapter_uses_triton(x, w_down, b_down, w_up, b_up, activation):
        from . import adapter_triton

        try:
            y = adapter_triton.adapter_forward(x.reshape(-1, x.shape[-1]), w_down, b_down, w_up, b_up, activation)
            return y.view(x.shape)
        except Exception as e:  # noqa: BLE001 - auto mode falls back (once, with a warning); triton mode re-raises
            dispatch.adapter_launch_failed(x, w_down, activation, e)
    with torch.no_grad():
        return bottleneck_adapter_reference(x, w_down, b_down, w_up, b_up, activation).contiguous()


@bottleneck_adapter_op.register_fake
def _(x, w_down, b_down, w_up, b_up, activation):
    return x.new_empty(x.shape)


@torch.library.custom_op("negint_ds::bottleneck_adapter_backward", mutates_args=())
def bottleneck_adapter_backward_op(dy: torch.Tensor, x: torch.Tensor, w_down: torch.Tensor, b_down: torch.Tensor,
                                   w_up: torch.Tensor, b_up: torch.Tensor, activation: str,
                                   needs: list[bool]) -> list[torch.Tensor]:
    """(dx, dW_down, db_down, dW_up, db_up) for ``needs`` (a 5-list of bools); unneeded ones are empty (0,)."""
    grads = None
    if dispatch.adapter_uses_triton(x, w_down, b_down, w_up, b_up, activation):
        from . import adapter_triton

        try:
            d = x.shape[-1]
            grads = list(adapter_triton.adapter_backward(x.reshape(-1, d), dy.reshape(-1, d), w_down, b_down, w_up,
                                                         activation, tuple(needs)))
            if grads[0] is not None:
                grads[0] = grads[0].view(x.shape)
        except Exception as e:  # noqa: BLE001
            dispatch.adapter_launch_failed(x, w_down, activation, e)
            grads = None
    if grads is None:  # autograd does not run inside a custom op: the closed-form reference gradients
        grads = bottleneck_adapter_backward_reference(x, dy, w_down, b_down, w_up, activation, tuple(needs))
    return [g.contiguous() if g is not None else x.new_empty(0) for g in grads]


@bottleneck_adapter_backward_op.register_fake
def _(dy, x, w_down, b_down, w_up, b_up, activation, needs):
    return [t.new_empty(t.shape) if n else x.new_empty(0) for t, n in zip((x, w_down, b_down, w_up, b_up), needs)]


def _setup_context(ctx, inputs, output):
    x, w_down, b_down, w_up, b_up, activation = inputs
    ctx.save_for_backward(x, w_down, b_down, w_up, b_up)
    ctx.activation = activation


def _backward(ctx, dy):
    needs = [bool(n) for n in ctx.needs_input_grad[:5]]
    grads = bottleneck_adapter_backward_op(dy, *ctx.saved_tensors, ctx.activation, needs)
    return (*(g if n else None for g, n in zip(grads, needs)), None)


bottleneck_adapter_op.register_autograd(_backward, setup_context=_setup_context)
