"""Pretraining on DeepSpeed: one language per optimiser step, per-language validation, exact resume.

DeepSpeed owns ZeRO partitioning, precision, gradient accumulation, clipping and the optimiser; this
module owns the data order, the language schedule, evaluation, logging and the run directory.
Later components (gradient-similarity probes, meta-learning drivers) hook in through
:class:`TrainerCallback` or subclass :class:`Trainer` and override :meth:`Trainer.train_step`.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import signal
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .. import __version__
from ..atomic import atomic_write_json
from ..config import precision, to_mapping, zero_stage
from ..data.batches import TrainBatches, eval_batches
from ..data.sampling import LanguageSchedule, language_probs
from ..data.vocab import N_SPECIAL, PAD_ID
from ..mlm import MLMBatch
from ..model import MaskedLM, build_model, count_parameters, flops_per_token, set_explicit_dropout
from ..params import save_phi, split_parameters
from ..seeding import derive_seed
from .compiling import compile_engine
from .dist import barrier, on_rank0
from .evaluate import check_eval_sizes, evaluate, format_ppl
from .lr_schedule import InverseSqrtWithWarmup
from .ckpt_manifest import write_manifest
from .metrics import MetricsLogger
from .nonfinite import NonFiniteError, NonFiniteGuard, parameters_finite
from .phi_training import PhiTraining, loss_scale
from .prefetch import Prefetcher
from .report import plot_curves, write_final
from .setup import Prepared, check_checkpoint_matches, dump_yaml

log = logging.getLogger("negint_ds")
PHI_STATE = "phi_optimizer.pt"  # per-language φ optimiser state, beside DeepSpeed's files in a checkpoint
#: train.csv columns of a meta run (also in metrics.jsonl): the last meta step of each logging window
META_COLUMNS = ("meta_val_loss", "phi_grad_norm", "second_order_share", "v_norm", "fd_eps", "phi_step_skipped")


class TrainerCallback:
    """Hooks called on every rank. Override what you need (e.g. a per-language gradient-similarity probe).

    A hook that runs collectives must do so on every rank; ``trainer.engine.module`` is the model and
    ``trainer.split`` its θ/φ split.
    """

    def on_train_start(self, trainer: "Trainer") -> None:
        """Before the first step (after the step-0 evaluation of a new run)."""

    def on_step_end(self, trainer: "Trainer", step: int, lang: int, batches: list[MLMBatch]) -> None:
        """After optimiser step ``step`` (1-based count of completed steps) on language index ``lang``,
        with this rank's micro-batches of that step (on the training device)."""

    def on_eval(self, trainer: "Trainer", step: int, results: dict) -> None:
        """After each evaluation; ``results`` as returned by :func:`~negint_ds.train.evaluate.evaluate`."""

    def on_train_end(self, trainer: "Trainer") -> None:
        """After the final report and export."""


class Trainer:
    """Builds the model and DeepSpeed engine from a :class:`~negint_ds.train.setup.Prepared` run and trains it.

    Attributes:
        engine: the DeepSpeed engine; ``engine.module`` is the :class:`~negint_ds.model.MaskedLM`.
        step: optimiser steps completed.
        lang_ids: language ids; index i is language embedding i.
    """

    def __init__(self, prep: Prepared, rank: int, world_size: int, resume: bool, overwrite: bool,
                 progress: bool = True, callbacks: list[TrainerCallback] | None = None):
        self.prep, self.cfg, self.paths = prep, prep.cfg, prep.paths
        self.rank, self.world = rank, world_size
        self.lang_ids = prep.cfg.lang_ids
        self.progress, self.callbacks = progress, list(callbacks or [])
        self._stop_signal: int | None = None
        tc = self.cfg.train

        if not resume:
            on_rank0(lambda: self.paths.create(overwrite, dump_yaml(self.cfg), prep.ds_cfg), rank, world_size)
        self._setup_logging()

        counts = [prep.manifest["languages"][l]["splits"]["train"]["sentences"] for l in self.lang_ids]
        self.lang_probs = language_probs(counts, tc.lang_temperature)
        self.schedule = LanguageSchedule(self.lang_probs, tc.seed)

        model = self._build_engine()
        self.guard = NonFiniteGuard(tc.nonfinite.max_consecutive_skips, tc.nonfinite.action, self.engine, self.device)
        self._restore(resume)
        self.batches = TrainBatches(prep.train_streams, self.schedule, tc.seq_len, self.micro, self.accum,
                                    world_size, rank, self.cfg.mlm, prep.vocab.size, prep.vocab.mask_id, N_SPECIAL,
                                    tc.seed, start_step=self.step, names=self.lang_ids)
        self.valid = {lang: eval_batches(s, i, tc.seq_len, tc.eval_sequences, tc.eval_batch_size, rank, world_size,
                                         self.cfg.mlm, prep.vocab.size, prep.vocab.mask_id, N_SPECIAL, tc.seed)
                      for i, (lang, s) in enumerate(zip(self.lang_ids, prep.valid_streams))}
        self._log_summary(model, resume)

    # ------------------------------------------------------------------ set-up helpers
    def _build_engine(self) -> MaskedLM:
        """Model with identical initial weights on every rank; θ to DeepSpeed, φ to :class:`PhiTraining`."""
        import deepspeed

        tc = self.cfg.train
        torch.manual_seed(derive_seed(tc.seed, "init"))
        model = build_model(self.cfg.model, self.prep.vocab.size, len(self.lang_ids), PAD_ID, self.lang_ids)
        meta = self.cfg.meta
        # the meta passes (fp32, any attention kernel) and the θ step must draw the same dropout masks
        self.explicit_dropout = meta.enabled and meta.explicit_dropout
        set_explicit_dropout(model, self.explicit_dropout)
        self.split = split_parameters(model, len(self.lang_ids))
        phi_init = [[p.detach().clone() for p in phi.values()] for phi in self.split.phi]  # fp32, before any cast
        for phi in self.split.phi:
            for p in phi.values():
                p.requires_grad_(False)  # outside DeepSpeed's optimiser (see phi_training.py)
        ds_cfg = dict(self.prep.ds_cfg)
        ds_cfg.setdefault("steps_per_print", 10 ** 9)  # our logger reports; keep DeepSpeed's quiet
        ds_cfg["tensorboard"] = {"enabled": True, "output_path": self.paths.tensorboard, "job_name": "."}
        scheduler = None
        if "scheduler" not in ds_cfg:
            base_lr = float(ds_cfg["optimizer"].get("params", {}).get("lr", 1e-3))
            fn = InverseSqrtWithWarmup(tc.warmup_steps, tc.warmup_init_lr / base_lr)
            scheduler = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, fn)  # noqa: E731
        if zero_stage(ds_cfg) == 3:
            # The MLM head reads the tied embedding outside the embedding module's own forward.
            deepspeed.zero.register_external_parameter(model, model.encoder.tok_emb.weight)
        self.engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=list(self.split.theta.values()),
                                                    config=ds_cfg, lr_scheduler=scheduler)
        self.device = self.engine.device
        _check_kernels(model, self.engine)
        self.phi = (PhiTraining(self.cfg, self.engine, self.split, phi_init, ds_cfg, self.prep, self.world, self.rank)
                    if self.split.has_phi else None)
        if tc.compile:  # the meta passes run eagerly (see negint_ds.meta.passes.eager); they need its RNG
            compile_engine(self.engine, len(self.lang_ids), eager_rng=self.explicit_dropout)
        self.micro = self.engine.train_micro_batch_size_per_gpu()
        self.accum = self.engine.gradient_accumulation_steps()
        return model

    def _restore(self, resume: bool) -> None:
        """Load the checkpoint the pre-flight chose (on resume), move damaged ones aside, align the logs with
        it, write the run files."""
        self.step, self.first_eval = 0, None
        self._eval_sizes_checked = False
        point = self.prep.resume if resume else None
        if point is not None:
            log.info("%s", point.describe())
            moved = self._rank0(lambda: self.paths.apply_resume_point(point, self.cfg.train.keep_checkpoints))
            if moved:
                log.warning("moved interrupted or damaged checkpoints %s to %s", moved,
                            os.path.join(self.paths.checkpoints, "quarantine"))
            barrier()
        latest = {"tag": point.tag} if point is not None and point.tag is not None else None
        if latest is not None:
            _, client = self.engine.load_checkpoint(self.paths.checkpoints, tag=latest["tag"])
            check_checkpoint_matches(client, self.prep)
            if self.phi is not None:
                self.phi.load_state_dict(torch.load(os.path.join(self.paths.checkpoints, latest["tag"], PHI_STATE),
                                                    map_location=self.device, weights_only=False))
            self.step = int(client["step"])
            self.first_eval = client.get("first_eval")
        extra = META_COLUMNS if self.cfg.meta.enabled else ()
        self.metrics = MetricsLogger(self.paths, self.lang_ids, self.engine.monitor, enabled=self.rank == 0,
                                     extra_train_cols=extra)

        def align_logs():
            # without a checkpoint the step-0 evaluation runs again: drop its earlier record too
            self.metrics.truncate_after(self.step if latest is not None else -1)
            self._write_run_files(resume)
            rec = [r for r in self.metrics.records("valid") if r["step"] == self.step]
            if not rec:
                return None
            res = {l: {k: rec[-1].get(f"{k}_{l}") for k in ("loss", "ppl", "tokens", "ppl_lo", "ppl_hi")}
                   for l in self.lang_ids}
            check_eval_sizes(res, self.cfg.train.min_eval_tokens, warn=False)
            return res

        last = _broadcast_object(self._rank0(align_logs))
        self.last_eval = (self.step, last) if last else None

    def _setup_logging(self) -> None:
        log.handlers.clear()
        log.propagate = False
        log.setLevel(logging.INFO if self.rank == 0 else logging.WARNING)
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
        console = _TqdmHandler()
        console.setFormatter(fmt)
        log.addHandler(console)
        if self.rank == 0:
            fh = logging.FileHandler(self.paths.log, encoding="utf-8")
            fh.setFormatter(fmt)
            log.addHandler(fh)

    def _rank0(self, fn):
        """Run file work on rank 0 without leaving other ranks in a collective if it fails (see on_rank0)."""
        return on_rank0(fn, self.rank, self.world)

    def _write_run_files(self, resume: bool) -> None:
        meta = {}
        if os.path.isfile(self.paths.meta):
            with open(self.paths.meta, encoding="utf-8") as f:
                meta = json.load(f)
        meta.setdefault("name", self.cfg.name)
        meta.setdefault("data_fingerprint", self.prep.manifest["fingerprint"])
        meta.setdefault("vocab_sha256", self.prep.vocab.sha256)
        meta["lang_ids"] = self.lang_ids
        meta["lang_probs"] = dict(zip(self.lang_ids, map(float, self.lang_probs)))
        meta.setdefault("sessions", []).append({
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "argv": sys.argv, "resumed_from_step": self.step if resume else None, "world_size": self.world,
            "device": str(self.device), "host": platform.node(), "python": platform.python_version(),
            "torch": torch.__version__, "deepspeed": _ds_version(), "negint_ds": __version__,
        })
        atomic_write_json(self.paths.meta, meta)

    def _log_summary(self, model: MaskedLM, resume: bool) -> None:
        tc, mc = self.cfg.train, self.cfg.model
        n = count_parameters(model)
        log.info("run %s: %s in %s", self.cfg.name, "resuming at step %d" % self.step if resume else "new run",
                 self.paths.root)
        log.info("model: %d layers, d=%d, %d heads, FFN %d, vocab %d, %.2fM parameters, %.1f MFLOP/token",
                 mc.layers, mc.dim, mc.heads, mc.ffn_dim, self.prep.vocab.size, n / 1e6,
                 flops_per_token(mc, tc.seq_len, self.prep.vocab.size, self.cfg.mlm.mask_prob) / 1e6)
        if self.split.has_phi:
            per_lang = sum(p.numel() for p in self.split.phi[0].values())
            parts = list(mc.language_specific) + ([f"{mc.adapters.kind} adapters"] if mc.adapters.kind != "none" else [])
            how = (f"meta-learned (Algorithm 1, {self.cfg.meta.hypergradient} hypergradient)" if self.cfg.meta.enabled
                   else "jointly, one AdamW state per language")
            log.info("language-specific φ: %s, %s parameters per language, trained %s", ", ".join(parts),
                     f"{per_lang:,}", how)
        log.info("languages (P_i at T=%.2f): %s", tc.lang_temperature,
                 ", ".join(f"{l}={p:.3f}" for l, p in zip(self.lang_ids, self.lang_probs)))
        log.info("DeepSpeed: ZeRO-%d, %s, %d process(es) on %s, micro-batch %d x accumulation %d x world %d = %d "
                 "sequences of %d tokens per step", zero_stage(self.prep.ds_cfg), precision(self.prep.ds_cfg),
                 self.world, self.device, self.micro, self.accum, self.world, self.micro * self.accum * self.world,
                 tc.seq_len)

    # ------------------------------------------------------------------ training
    def seed_dropout(self, step: int, phase: str, lang: int, micro: int) -> None:
        """Seed dropout for one forward from (seed, step, phase, language, global micro-batch index).

        ``micro`` is this rank's local index k; micro-batch k of rank r is global micro-batch k·world + r
        for the train batch and for the meta-validation batches alike, so a 1-process run with N
        accumulation steps draws the same dropout masks as N processes. The virtual step, the probes
        (or the exact second-order pass) and the θ step of a meta step use phase "train" for the step's
        batch, so they see the same masks (with ``meta.phi_batch: fresh`` the φ step's passes share phase
        "fresh"); ``meta.explicit_dropout`` makes those masks independent of dtype and attention kernel.
        """
        torch.manual_seed(derive_seed(self.cfg.train.seed, "dropout", step, phase, lang, micro * self.world + self.rank))

    def train_step(self, step: int) -> tuple[int, torch.Tensor, list[MLMBatch]]:
        """One optimiser step on the language the schedule draws for ``step`` (Algorithm 1 when meta-learning:
        the φ_i step before the θ step, or after it with ``meta.order: theta_first``).

        Returns:
            (language index, this rank's mean micro-batch loss as a 0-d device tensor, the micro-batches).
        """
        lang, batches = self.prefetcher.get(step)
        batches = [mb.to(self.device) for mb in batches]  # once: the meta update and the θ step share them
        lr = float(self.engine.get_lr()[0])  # this step's lr (DeepSpeed advances the schedule in step())
        hook = lambda phase, j, m: self.seed_dropout(step, phase, j, m)  # noqa: E731
        meta = self.phi is not None and self.phi.meta_due(step)
        theta_first = meta and self.cfg.meta.order == "theta_first"
        if meta and not theta_first:
            self.phi.meta_update(step, lang, batches, lr, hook)  # φ_i first (Algorithm 1) ...
        leaves = self.phi.train_leaves(lang) if self.phi is not None else None
        scale = loss_scale(self.engine) if leaves is not None else 1.0
        total = torch.zeros((), device=self.device)
        for m, mb in enumerate(batches):  # ... then θ on L_train^i(θ, φ^{new})
            hook("train", lang, m)
            if leaves is None:
                loss = self.engine(mb.input_ids, mb.lang_ids, mb.pred_positions, mb.targets, lang=lang)
            else:
                loss = self.phi.forward(leaves, mb, lang)
            self.engine.backward(loss)
            if leaves is not None:
                self.phi.accumulate(leaves)  # fp32, before the next micro-batch adds to the 16-bit .grad
            self.engine.step()
            total += loss.detach().float()
        if leaves is not None:
            self.phi.apply_train_grads(lang, leaves, lr, scale)
        if theta_first:  # the official code: φ_i's meta step at θ^(t+1)
            self.phi.meta_update(step, lang, batches, lr, hook)
        return lang, total / len(batches), batches

    def run_eval(self) -> dict:
        """Validation perplexity for every language at the current step; logged and returned.

        Languages with fewer than ``train.min_eval_tokens`` masked tokens are flagged (``too_few_tokens``) at
        every evaluation and warned about once per run, at its first evaluation (the valid set never changes).
        """
        res = evaluate(self.engine, self.valid)
        warn = self.rank == 0 and not self._eval_sizes_checked
        check_eval_sizes(res, self.cfg.train.min_eval_tokens, warn=warn)
        self._eval_sizes_checked = True
        rec = {"kind": "valid", "step": self.step}
        for lang, r in res.items():
            rec.update({f"{k}_{lang}": r[k] for k in ("ppl", "loss", "tokens", "ppl_lo", "ppl_hi")})
        self._rank0(lambda: self.metrics.write(rec))
        self.last_eval = (self.step, res)
        log.info("step %d valid ppl: %s", self.step, "  ".join(f"{l} {format_ppl(r)}" for l, r in res.items()))
        if self.first_eval is None:
            self.first_eval = res
        for cb in self.callbacks:
            cb.on_eval(self, self.step, res)
        return res

    def save(self) -> None:
        """DeepSpeed checkpoint of the current step, its manifest, then (rank 0) name it in latest.json.

        Non-finite weights are never checkpointed: the last finite checkpoint stays in charge.

        Raises:
            NonFiniteError: the weights are not finite and ``train.nonfinite.action`` is ``stop``.
        """
        if not parameters_finite(self.engine.module):
            msg = (f"the model's weights are not finite at step {self.step}; not saving a checkpoint (the last "
                   f"finite one, {(self.paths.latest() or {}).get('tag', 'none')}, stays in charge)")
            if self.cfg.train.nonfinite.action == "stop":
                raise NonFiniteError(msg + ": the run has diverged; lower the learning rate or raise warm-up")
            log.warning("%s", msg)
            return
        tag = f"step_{self.step:08d}"
        client = {"step": self.step, "vocab_sha256": self.prep.vocab.sha256,
                  "data_fingerprint": self.prep.manifest["fingerprint"], "lang_ids": self.lang_ids,
                  "first_eval": self.first_eval, "negint_ds_version": __version__}
        self.engine.save_checkpoint(self.paths.checkpoints, tag=tag, client_state=client, save_latest=False)
        phi_state = self.phi.state_dict() if self.phi is not None else None  # identical on every rank

        def write_phi():
            if phi_state is not None:
                path = os.path.join(self.paths.checkpoints, tag, PHI_STATE)
                torch.save(phi_state, path + ".tmp")
                os.replace(path + ".tmp", path)

        self._rank0(write_phi)
        barrier()  # every rank's DeepSpeed files are on disk before the manifest lists them
        identity = {k: client[k] for k in ("vocab_sha256", "data_fingerprint", "lang_ids")}
        self._rank0(lambda: write_manifest(os.path.join(self.paths.checkpoints, tag), tag, self.step, identity))
        removed = self._rank0(lambda: self.paths.commit_checkpoint(tag, self.step, self.cfg.train.keep_checkpoints))
        log.info("checkpoint %s saved%s", tag, f" (removed {', '.join(removed)})" if removed else "")

    def _stop_requested(self) -> bool:
        flag = torch.tensor([1.0 if self._stop_signal is not None else 0.0], device=self.device)
        if dist.is_initialized() and self.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def train(self) -> dict | None:
        """Train to ``train.max_steps`` (or until SIGINT/SIGTERM, then checkpoint and stop).

        Returns:
            The final per-language validation results, or None if stopped early.
        """
        tc = self.cfg.train
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._on_signal)
        for cb in self.callbacks:
            cb.on_train_start(self)
        if self.step == 0:
            self.run_eval()
        self.prefetcher = Prefetcher(self.batches, self.step, tc.max_steps, pin=self.device.type == "cuda")
        tokens_per_step = self.micro * self.accum * self.world * tc.seq_len
        n_langs = len(self.lang_ids)
        win_loss = torch.zeros(n_langs, device=self.device)
        win_count = torch.zeros(n_langs, device=self.device)
        win_steps, win_time = 0, 0.0  # throughput excludes evaluation and checkpoint time
        start_time = time.time()
        pbar = tqdm(total=tc.max_steps, initial=self.step, unit="step", dynamic_ncols=True,
                    disable=self.rank != 0 or not self.progress or not sys.stderr.isatty(), desc=self.cfg.name)
        stopped = False
        t0 = time.perf_counter()
        while self.step < tc.max_steps:
            lang, loss, batches = self.train_step(self.step)
            self.step += 1
            self.guard.after_step(self.step, loss)
            win_loss[lang] += loss
            win_count[lang] += 1
            win_steps += 1
            pbar.update(1)
            for cb in self.callbacks:
                cb.on_step_end(self, self.step, lang, batches)
            last = self.step == tc.max_steps
            if self.step % tc.log_every == 0 or last:
                stats = torch.cat([win_loss, win_count])
                if dist.is_initialized() and self.world > 1:
                    dist.all_reduce(stats)
                sums, cnts = stats[:n_langs].tolist(), stats[n_langs:].tolist()  # synchronises the device
                win_time += time.perf_counter() - t0
                rec = {"kind": "train", "step": self.step, "loss": sum(sums) / max(sum(cnts), 1.0),
                       **{f"loss_{l}": s / c for l, s, c in zip(self.lang_ids, sums, cnts) if c},
                       "lr": float(self.engine.get_lr()[0]), "grad_norm": _grad_norm(self.engine),
                       "tokens_per_s": win_steps * tokens_per_step / max(win_time, 1e-9),
                       "elapsed_s": time.time() - start_time}
                if self.phi is not None:
                    rec.update({k: v for k, v in self.phi.stats.items() if v is not None})
                self._rank0(lambda: self.metrics.write(rec))
                pbar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:,.0f}", lr=f"{rec['lr']:.2e}")
                log.info("step %d/%d loss %.4f lr %.3g %s tokens/s", self.step, tc.max_steps, rec["loss"],
                         rec["lr"], f"{rec['tokens_per_s']:,.0f}")
                win_loss.zero_()
                win_count.zero_()
                win_steps, win_time = 0, 0.0
                stopped = self._stop_requested()
                self.guard.check(self.step)
                t0 = time.perf_counter()
            do_eval = self.step % tc.eval_every == 0 or last
            do_save = self.step % tc.save_every == 0 or last or stopped
            if do_eval or do_save:
                win_time += time.perf_counter() - t0
                if do_eval:
                    self.run_eval()
                if do_save:
                    self.save()
                t0 = time.perf_counter()
            if stopped:
                log.warning("stopped by signal at step %d; continue with --resume", self.step)
                break
        pbar.close()
        self.prefetcher.close()
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_DFL)
        if stopped:
            return None
        return self.finish()

    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self._stop_signal = signum
        log.warning("received signal %d: finishing the logging window, then checkpointing", signum)

    def finish(self) -> dict:
        """Final evaluation table, curves and the exported model (rank 0 writes)."""
        if self.last_eval is None or self.last_eval[0] != self.step:
            self.run_eval()
        final = self.last_eval[1]
        self.export()

        def report():
            table = write_final(self.paths, final, self.step, self.first_eval)
            plot_curves(self.metrics.records("valid"), self.lang_ids, self.paths.curves, self.cfg.name)
            log.info("\n%s", table)
            log.info("run directory: %s (metrics.jsonl, ppl_curves.png, export/, checkpoints/)", self.paths.root)

        self._rank0(report)
        for cb in self.callbacks:
            cb.on_train_end(self)
        return final

    def export(self) -> None:
        """Write ``export/model.safetensors`` (fp32), ``phi.safetensors``, ``model.json`` and ``spm.model``.

        fp32 values come from: the module when training in fp32; otherwise DeepSpeed's fp32 master weights
        in the final checkpoint (ZeRO ≥ 1) for θ, falling back to the 16-bit working copy when those cannot
        be read (recorded in ``model.json["weights_source"]``); φ always from its fp32 masters.
        """
        import contextlib
        import shutil

        from safetensors.torch import save_model

        if not parameters_finite(self.engine.module):
            raise NonFiniteError(f"the model's weights are not finite at step {self.step}: not exporting them")

        module, stage, prec = self.engine.module, zero_stage(self.prep.ds_cfg), precision(self.prep.ds_cfg)
        ctx = contextlib.nullcontext()
        if stage == 3:
            import deepspeed

            ctx = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
        with ctx:  # collective under ZeRO-3: every rank enters, rank 0 copies
            state = {k: v.detach().float().cpu() for k, v in module.state_dict().items()} if self.rank == 0 else None
        masters = {}
        if self.phi is not None:
            masters = {n: m.detach().float().cpu() for names, ms in zip(self.phi.opt.names, self.phi.opt.masters)
                       for n, m in zip(names, ms)}
        tag = (self.paths.latest() or {}).get("tag")

        def write():
            source = "fp32 training"
            if prec != "fp32":
                source = f"{prec} working copy"
                if stage >= 1 and tag is not None:
                    try:
                        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

                        fp32 = get_fp32_state_dict_from_zero_checkpoint(self.paths.checkpoints, tag=tag)
                        state.update({k: v.float().cpu() for k, v in fp32.items() if k in state})
                        source = "fp32 master weights (DeepSpeed checkpoint)"
                    except Exception as e:  # keep the export, say where the values came from
                        log.warning("could not read fp32 master weights from %s (%s); exporting the %s working "
                                    "copy", tag, e, prec)
            state.update(masters)
            os.makedirs(self.paths.export, exist_ok=True)
            cpu = build_model(self.cfg.model, self.prep.vocab.size, len(self.lang_ids), PAD_ID, self.lang_ids)
            cpu.load_state_dict(state)
            tmp = os.path.join(self.paths.export, ".model.safetensors.tmp")
            save_model(cpu, tmp)
            os.replace(tmp, os.path.join(self.paths.export, "model.safetensors"))
            shutil.copyfile(self.prep.vocab.path, os.path.join(self.paths.export, "spm.model"))
            if self.phi is not None:
                save_phi(cpu, os.path.join(self.paths.export, "phi.safetensors"), self.lang_ids)
            atomic_write_json(os.path.join(self.paths.export, "model.json"), {
                "model": to_mapping(self.cfg.model), "vocab_size": self.prep.vocab.size, "lang_ids": self.lang_ids,
                "pad_id": PAD_ID, "mask_id": self.prep.vocab.mask_id, "vocab_sha256": self.prep.vocab.sha256,
                "step": self.step, "trained_precision": prec, "weights_source": source,
                "data_fingerprint": self.prep.manifest["fingerprint"]})

        self._rank0(write)


def _check_kernels(model, engine) -> None:
    """Run the fused adapter's one-time self-check now, before any step or ``torch.compile`` trace (auto mode on
    CUDA; elsewhere it only records that the reference runs). A failing configuration warns once here."""
    from ..kernels import self_check
    from ..model import BottleneckAdapter

    shapes = [(m.down.in_features, m.down.out_features, m.activation) for m in model.modules()
              if isinstance(m, BottleneckAdapter)]
    if not shapes:
        return
    dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float16 if engine.fp16_enabled() else torch.float32
    fused = self_check(shapes, dtype, engine.device)
    log.info("adapter kernels (%s): %s", dtype, ", ".join(f"d={d} b={b} {a}: {'fused' if ok else 'torch'}"
                                                          for (d, b, a), ok in fused.items()))


def _grad_norm(engine) -> float | None:
    g = engine.get_global_grad_norm()
    if g is None:
        return None
    g = float(g)
    return None if np.isnan(g) else g


def _broadcast_object(obj):
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def _ds_version() -> str:
    import deepspeed

    return deepspeed.__version__


class _TqdmHandler(logging.StreamHandler):
    """Log lines that do not break a running progress bar."""

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)
