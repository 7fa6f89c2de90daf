"""TF32 matmuls emulated on any device, to measure what TF32 would do to the meta step without an Ampere+ GPU.

NVIDIA's TF32 tensor-core mode rounds both fp32 operands of a matmul to 10 mantissa bits (fp32 has 23) and
accumulates in fp32. :func:`emulate_tf32` does the same to every fp32 ``mm``/``addmm``/``bmm``/``baddbmm`` at
the ATen level, so forward and backward matmuls alike (attention must run on the math kernel, whose matmuls
are ordinary ``bmm``; :func:`~negint_ds.meta.passes.math_sdpa`). Rounding is to nearest, ties to even.
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
#: op → indices of its multiplied operands (a bias or accumulator input stays fp32)
_OPERANDS = {_aten.mm.default: (0, 1), _aten.bmm.default: (0, 1), _aten.addmm.default: (1, 2),
             _aten.baddbmm.default: (1, 2)}


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """``x`` (fp32) rounded to the nearest TF32 value (10-bit mantissa, ties to even); other dtypes unchanged.

    Not differentiable (integer bit manipulation): meant for use below autograd, as :func:`emulate_tf32` does.
    """
    if x.dtype != torch.float32:
        return x
    bits = x.contiguous().view(torch.int32)
    lsb = (bits >> 13) & 1  # the lowest kept mantissa bit, for ties to even
    rounded = (bits + 0xFFF + lsb) & ~0x1FFF
    return rounded.view(torch.float32).view(x.shape)


class emulate_tf32(TorchDispatchMode):
    """Context: every fp32 matmul inside it multiplies TF32-rounded operands (see module docstring)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        idx = _OPERANDS.get(func)
        if idx is not None:
            args = tuple(round_to_tf32(a) if i in idx and isinstance(a, torch.Tensor) else a
                         for i, a in enumerate(args))
        return func(*args, **(kwargs or {}))


__all__ = ["emulate_tf32", "round_to_tf32"]
