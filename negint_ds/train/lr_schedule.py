"""XLM's ``adam_inverse_sqrt`` learning-rate schedule as a multiplicative factor for ``LambdaLR``."""
from __future__ import annotations

import math


class InverseSqrtWithWarmup:
    """lr(s) = base · f(s): linear warm-up from ``init_lr`` to ``base`` over ``warmup`` steps, then
    base · sqrt(warmup / s) (XLM ``AdamInverseSqrtWithWarmup``). ``warmup = 0`` means a constant lr.

    Args:
        warmup: warm-up steps (optimiser updates).
        init_ratio: init_lr / base lr (XLM: 1e-7 / 1e-4).
    """

    def __init__(self, warmup: int, init_ratio: float):
        self.warmup, self.init_ratio = int(warmup), float(init_ratio)

    def __call__(self, s: int) -> float:
        if self.warmup <= 0:
            return 1.0
        if s < self.warmup:
            return self.init_ratio + (1.0 - self.init_ratio) * s / self.warmup
        return math.sqrt(self.warmup / s)
