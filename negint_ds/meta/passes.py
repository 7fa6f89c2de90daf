"""Forward/backward passes of a meta step through ``torch.func.functional_call``, and their contexts."""
from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call

from ..kernels import fd_hvp_reference as fd_ops
from ..mlm import MLMBatch

#: Called as (phase, language, local micro-batch index) before every forward; the trainer seeds dropout there.
BeforeForward = Callable[[str, int, int], None]


def mlm_loss(model: nn.Module, overrides: dict[str, torch.Tensor], batch: MLMBatch, lang: int,
             reduction: str = "mean") -> torch.Tensor:
    """MLM loss of ``model`` with some parameters replaced by ``overrides`` (tied weights follow).

    Args:
        model: a :class:`~negint_ds.model.MaskedLM`; its own parameters are not modified.
        overrides: parameter name → tensor of that parameter's shape, any float dtype (e.g. fp32 θ' on a
            bf16 module: the forward then computes with the overrides' dtype).
        batch: one micro-batch on the model's device, every row of language ``lang``.
        lang: language index (routes the language-specific modules).
        reduction: ``mean`` (nats per predicted token), ``sum`` (nats) or ``none`` ((P,) per predicted token).

    Returns:
        0-d loss tensor, or (P,) losses with ``reduction="none"``.
    """
    return functional_call(model, overrides, (batch.input_ids, batch.lang_ids, batch.pred_positions, batch.targets),
                           {"lang": lang, "reduction": reduction}, tie_weights=True, strict=False)


@contextlib.contextmanager
def eager(model: nn.Module):
    """Run ``model`` eagerly inside the block even if ``nn.Module.compile`` (DeepSpeed's ``engine.compile()``)
    compiled it: the meta passes differentiate twice (exact mode) and swap in fp32 parameters, which a
    compiled graph would not support or would recompile for."""
    compiled = model.__dict__.get("_compiled_call_impl")
    model._compiled_call_impl = None
    try:
        yield
    finally:
        model._compiled_call_impl = compiled


def math_sdpa():
    """Context that restricts ``scaled_dot_product_attention`` to the math kernel (twice differentiable)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])
    except ImportError:  # pragma: no cover - torch < 2.3
        return contextlib.nullcontext()


@contextlib.contextmanager
def fp32_matmuls():
    """Full-precision fp32 matmuls inside the block (TF32 off), restored afterwards.

    TF32 keeps 10 mantissa bits of each fp32 matmul operand: θ⁺ and θ⁻ differ from θ by ~1e-5 of an
    element's size, far below TF32's resolution (4.9e-4), so with TF32 the probes see the same rounded
    weights and the Eq. 8 quotient measures rounding (README, "Precision of the meta step").
    """
    prev = torch.get_float32_matmul_precision()
    prev_cudnn = torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(prev)
        torch.backends.cudnn.allow_tf32 = prev_cudnn


def zeros(like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Gradient accumulators: fp32 for fp16/bf16/fp32 tensors, fp64 for fp64."""
    return [torch.zeros(t.shape, dtype=fd_ops.acc_dtype(t.dtype), device=t.device) for t in like]


def accumulate(total: list[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> None:
    """total += grads (``None`` = an unused parameter, adds nothing)."""
    for a, g in zip(total, grads):
        if g is not None:
            a += g.to(a.dtype)


def leaves(ts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Fresh autograd leaves with the values of ``ts`` (the originals are never touched)."""
    return [t.detach().requires_grad_(True) for t in ts]


def call(hook: BeforeForward | None, phase: str, lang: int, micro: int) -> None:
    """Run the before-forward hook if there is one."""
    if hook is not None:
        hook(phase, lang, micro)


def changed_fraction(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], dtype: torch.dtype) -> float:
    """Share of elements of ``a`` that differ from ``b`` once both are rounded to ``dtype`` (one host sync)."""
    diff = torch.stack([(x.to(dtype) != y.to(dtype)).sum() for x, y in zip(a, b)]).sum()
    return float(diff) / max(1, sum(x.numel() for x in a))


__all__ = ["BeforeForward", "accumulate", "call", "changed_fraction", "eager", "fp32_matmuls", "leaves", "math_sdpa",
           "mlm_loss", "zeros"]
