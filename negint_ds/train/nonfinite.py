"""The non-finite policy (``train.nonfinite``): a diverged run stops with a named error instead of
training on, checkpointing and exporting NaN.

A step is *bad* when its loss is not finite or DeepSpeed skipped its update for overflow. fp16 skips
while the dynamic loss scaler is still above its minimum scale are the scaler doing its job (it halves
the scale and retries) and do not count, unless the loss itself is not finite. The count of consecutive
bad steps lives on the device (no host sync per step) and is read at each logging boundary, where the
trainer synchronises anyway, and before every checkpoint and the export.
"""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from .phi_training import loss_scaler

log = logging.getLogger("negint_ds")


class NonFiniteError(RuntimeError):
    """Training produced non-finite values beyond what ``train.nonfinite`` allows."""


class NonFiniteGuard:
    """Tracks consecutive bad steps of one run (every rank the same way).

    Args:
        max_consecutive: ``train.nonfinite.max_consecutive_skips``.
        action: ``stop`` (raise :class:`NonFiniteError`) or ``warn`` (log and go on).
        engine: the DeepSpeed engine (``skipped_steps``, ``fp16_enabled()``).
        device: where the counters live.
    """

    def __init__(self, max_consecutive: int, action: str, engine, device: torch.device):
        self.max, self.action, self.engine = max_consecutive, action, engine
        self.run = torch.zeros((), dtype=torch.int64, device=device)  # current streak of bad steps
        self.longest = torch.zeros((), dtype=torch.int64, device=device)  # longest streak since the last check
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self._skipped = engine.skipped_steps
        self.warned = 0

    def after_step(self, step: int, loss: torch.Tensor) -> None:
        """Record optimiser step ``step`` (1-based) with this rank's mean loss (0-d device tensor)."""
        skipped = self.engine.skipped_steps > self._skipped
        self._skipped = self.engine.skipped_steps
        if skipped and self._scaler_searching():
            skipped = False
        bad = ~torch.isfinite(loss.detach()) | skipped
        self.run = torch.where(bad, self.run + 1, torch.zeros_like(self.run))
        self.longest = torch.maximum(self.longest, self.run)
        self.first_bad_step = torch.where(bad & (self.first_bad_step < 0), torch.full_like(self.first_bad_step, step),
                                          self.first_bad_step)

    def _scaler_searching(self) -> bool:
        scaler = loss_scaler(self.engine)
        if scaler is None or not getattr(scaler, "dynamic", True):
            return False
        return float(scaler.cur_scale) > float(getattr(scaler, "min_scale", 1.0))

    def check(self, step: int) -> None:
        """At a logging boundary: act if some streak reached the limit since the last check.

        Raises:
            NonFiniteError: ``action: stop`` and ``max_consecutive_skips`` consecutive bad steps.
        """
        stats = torch.stack([self.longest, self.run, self.first_bad_step.clamp_min(0)]).float()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats, op=dist.ReduceOp.MAX)  # every rank must reach the same decision
        longest, current, first = (int(v) for v in stats.tolist())
        self.longest = self.run.clone()
        if longest < self.max:
            return
        msg = (f"{longest} consecutive optimiser steps up to step {step} had a non-finite loss or an update skipped for "
               f"overflow (train.nonfinite.max_consecutive_skips={self.max}; the first bad step of the run was {first}). "
               f"The run has diverged: lower the learning rate or raise warm-up, then resume from the last "
               f"checkpoint (--resume) or start over")
        if self.action == "stop":
            raise NonFiniteError(msg)
        if current or self.warned == 0:
            log.warning("%s; carrying on (train.nonfinite.action=warn)", msg)
            self.warned += 1


def parameters_finite(module: torch.nn.Module) -> bool:
    """True when every parameter of ``module`` is finite on every rank (a collective when distributed)."""
    # under ZeRO-3 a rank holds its partition in ``ds_tensor`` and the module's tensor is empty
    flags = [torch.isfinite(t.detach()).all() for p in module.parameters()
             for t in (getattr(p, "ds_tensor", p),) if t.numel()]
    device = next(module.parameters()).device
    ok = torch.stack(flags).all().float() if flags else torch.ones((), device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


__all__ = ["NonFiniteError", "NonFiniteGuard", "parameters_finite"]
