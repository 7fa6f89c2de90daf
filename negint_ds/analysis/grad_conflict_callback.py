"""The gradient-conflict probe during pretraining (``analysis.grad_conflict`` in a recipe): a trainer callback.

Writes ``<run>/analysis/grad_conflict.csv`` (rows of :data:`~negint_ds.analysis.grad_conflict.COLUMNS`), and
at the end ``grad_conflict.png`` (Fig. 3), ``grad_conflict_groups.png`` and ``grad_conflict_cost.json`` (the
probe's time as a multiple of a training step). On ``--resume`` rows after the checkpoint's step are dropped
and probed again, so the file matches an uninterrupted run.
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np
import torch

from ..atomic import atomic_write_json
from ..config import GradConflictConfig
from ..data.vocab import N_SPECIAL
from ..meta.precision import fp32_theta
from ..train.trainer import TrainerCallback
from .grad_conflict import ProbeBatches, plot, probe, probe_pairs, read_rows, write_rows

log = logging.getLogger("negint_ds")


class GradConflictCallback(TrainerCallback):
    """Probe θ-gradient cosines at step 0 and every ``cfg.every`` steps (see :mod:`.grad_conflict`).

    Every rank runs the probe (it is a collective under data parallelism); rank 0 writes the files.
    """

    def __init__(self, cfg: GradConflictConfig):
        self.cfg = cfg
        self.probe_s: list[float] = []
        self.step_s: list[float] = []
        self._last: float | None = None

    def on_train_start(self, trainer) -> None:
        tc, prep = trainer.cfg.train, trainer.prep
        micro = self.cfg.micro_batch or trainer.micro
        self.batches = ProbeBatches(prep.train_streams, tc.seq_len, micro, trainer.cfg.mlm, prep.vocab.size,
                                    prep.vocab.mask_id, N_SPECIAL, tc.seed)
        self.dir = os.path.join(trainer.paths.root, "analysis")
        self.path = os.path.join(self.dir, "grad_conflict.csv")
        self.tokens_per_step = trainer.micro * trainer.accum * trainer.world * tc.seq_len
        self.train_tokens = sum(s.num_tokens for s in prep.train_streams)
        self.n_gradients = len(probe_pairs(trainer.lang_ids, self.cfg.controls)[0])
        # a 16-bit module takes φ's fp32 masters as well, so every matmul of the probe runs in fp32
        module = trainer.engine.module
        self.phi_masters = trainer.phi is not None and any(p.dtype not in (torch.float32, torch.float64)
                                                           for p in module.parameters())
        start = trainer.step

        def align():  # a resumed run probes again after its checkpoint: drop the rows of the lost steps
            rows = read_rows(self.path)
            if any(r["step"] > start for r in rows):
                write_rows(self.path, [r for r in rows if r["step"] <= start], append=False)

        trainer._rank0(align)
        log.info("gradient-conflict probe: every %d steps, %d sequences per gradient (micro-batch %d), %s controls, "
                 "dropout %s → %s", self.cfg.every, self.cfg.sequences, micro,
                 ", ".join(self.cfg.controls) if self.cfg.controls is not None else "every language's",
                 "on" if self.cfg.dropout else "off", self.path)
        if start == 0:
            self._probe(trainer, 0)
        self._last = time.perf_counter()

    def on_step_end(self, trainer, step: int, lang: int, batches) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.step_s.append(now - self._last)
        if step % self.cfg.every == 0:
            self._probe(trainer, step)
        self._last = time.perf_counter()

    def _probe(self, trainer, step: int) -> None:
        t0 = time.perf_counter()
        values, _ = fp32_theta(trainer.engine, trainer.split)  # a collective under ZeRO 1–2 with 16-bit training
        theta = dict(zip(trainer.split.theta, values))
        fixed = {}
        if self.phi_masters:
            fixed = {n: m for names, ms in zip(trainer.phi.opt.names, trainer.phi.opt.masters) for n, m in zip(names, ms)}
        rows = probe(trainer.engine.module, theta, fixed, self.batches, step, trainer.lang_ids, self.cfg, trainer.device,
                     trainer.rank, trainer.world)
        epoch = step * self.tokens_per_step / max(self.train_tokens, 1)
        for r in rows:
            r["epoch"] = epoch
        trainer._rank0(lambda: write_rows(self.path, rows))
        self.probe_s.append(time.perf_counter() - t0)
        whole = "  ".join(f"{r['pair']} {r['cosine']:+.3f}" for r in rows if r["group"] == "all")
        log.info("step %d θ-gradient cosine: %s (probe %.1f s)", step, whole, self.probe_s[-1])

    def cost(self) -> dict:
        """The probe's cost: mean seconds per probe, median seconds per training step, and their ratio."""
        step = float(np.median(self.step_s)) if self.step_s else None
        mean = float(np.mean(self.probe_s)) if self.probe_s else None
        return {"probes": len(self.probe_s), "mean_probe_s": mean, "median_train_step_s": step,
                "probe_over_step": mean / step if mean is not None and step else None,
                "sequences_per_gradient": self.cfg.sequences, "gradients_per_probe": self.n_gradients, "every": self.cfg.every,
                "overhead_fraction": mean / step / self.cfg.every if mean is not None and step else None}

    def on_train_end(self, trainer) -> None:
        cost = self.cost()

        def report():
            atomic_write_json(os.path.join(self.dir, "grad_conflict_cost.json"), cost)
            plot(read_rows(self.path), os.path.join(self.dir, "grad_conflict.png"),
                 f"{trainer.cfg.name}: θ-gradient similarity (cf. Fig. 3)")

        trainer._rank0(report)
        if cost["probe_over_step"] is not None:
            log.info("gradient-conflict probe: %.2f s per probe = %.1f training steps (%.0f%% overhead at every=%d); "
                     "figure %s", cost["mean_probe_s"], cost["probe_over_step"], 100 * cost["overhead_fraction"],
                     self.cfg.every, os.path.join(self.dir, "grad_conflict.png"))


def analysis_callbacks(cfg) -> list[TrainerCallback]:
    """The trainer callbacks a recipe's ``analysis`` section asks for."""
    out: list[TrainerCallback] = []
    if cfg.analysis.grad_conflict.enabled:
        out.append(GradConflictCallback(cfg.analysis.grad_conflict))
    return out


__all__ = ["GradConflictCallback", "analysis_callbacks"]
