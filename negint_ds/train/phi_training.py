"""Training the language-specific parameters φ beside DeepSpeed's θ: joint rows and Algorithm 1.

DeepSpeed's engine optimises θ only (φ has ``requires_grad=False`` in the module, so DeepSpeed never sees
it). φ gradients are taken through ``engine.module`` with ``torch.func.functional_call`` (φ_i passed as
fresh leaf tensors), averaged over data-parallel ranks by hand, un-scaled with DeepSpeed's current fp16
loss scale, and applied by a :class:`~negint_ds.phi_optim.LanguageOptimizer` that steps only φ_i.

* Joint training (paper rows +ffn, +attn, +adpt): in the θ step, φ_i gets the gradient of the same
  train loss and takes an AdamW step with the current learning rate.
* Meta training (+meta adpt, Algorithm 1): φ_i ← φ_i − α ∇φ_i F with the hypergradient of
  :mod:`negint_ds.meta.hypergrad`, before the θ step on L_train^i(θ, φ^{new}) (``meta.order: phi_first``)
  or after it, at θ^(t+1) (``theta_first``, the official code).

This works at ZeRO 0–2, where ``engine.module`` holds whole parameters; ZeRO-3 is refused at set-up.
"""
from __future__ import annotations

import contextlib
import logging

import torch

from ..config import ExperimentConfig
from ..data.vocab import N_SPECIAL
from ..kernels import fd_ops
from ..meta import MetaInputs, fp32_matmuls, hypergradient, meta_params, mlm_loss
from ..meta.val_batches import MetaValBatches, resolve_val_micro
from ..mlm import MLMBatch
from ..params import ParamSplit
from ..phi_optim import LanguageOptimizer
from .dist import all_reduce_mean_

log = logging.getLogger("negint_ds")


def loss_scaler(engine):
    """DeepSpeed's fp16 loss scaler object (with ``update_scale(overflow)``), or None (bf16/fp32)."""
    if not engine.fp16_enabled():
        return None
    scaler = getattr(engine.optimizer, "loss_scaler", None)
    return scaler if hasattr(scaler, "update_scale") else None


def loss_scale(engine) -> float:
    """DeepSpeed's current fp16 loss scale (1.0 for bf16/fp32)."""
    if not engine.fp16_enabled():
        return 1.0
    opt = engine.optimizer
    for get in (lambda: opt.loss_scale, lambda: opt.cur_scale, lambda: opt.loss_scaler.cur_scale):
        try:
            v = get()
        except AttributeError:
            continue
        if v is not None:
            return float(v)
    return 1.0


class PhiTraining:
    """φ's optimiser(s), the meta-validation batches and the φ-aware parts of a training step.

    Args:
        cfg: the experiment config.
        engine: the DeepSpeed engine (θ only).
        split: θ/φ split of ``engine.module``.
        phi_init: fp32 initial φ values per language (taken before DeepSpeed cast the module).
        ds_cfg: resolved DeepSpeed config (AdamW betas/eps/weight decay and clipping for φ).
        prep, world_size, rank: for the meta-validation batches.
    """

    def __init__(self, cfg: ExperimentConfig, engine, split: ParamSplit, phi_init: list[list[torch.Tensor]],
                 ds_cfg: dict, prep, world_size: int, rank: int):
        self.cfg, self.engine, self.split, self.world = cfg, engine, split, world_size
        p = ds_cfg["optimizer"].get("params", {})
        kw = dict(betas=tuple(p.get("betas", (0.9, 0.999))), eps=p.get("eps", 1e-8),
                  weight_decay=p.get("weight_decay", 0.0), max_grad_norm=ds_cfg.get("gradient_clipping"))
        self.meta = cfg.meta if cfg.meta.enabled else None
        # meta rows: φ's meta step uses meta.phi_optimizer; joint rows: AdamW on the train loss
        self.opt = LanguageOptimizer(split, initial=phi_init, algorithm=self.meta.phi_optimizer if self.meta else "adamw",
                                     **kw)
        if self.meta is None:
            self.train_opt = self.opt  # joint rows: φ_i follows the train loss
        elif self.meta.phi_train_loss:
            self.train_opt = LanguageOptimizer(split, share_masters_with=self.opt, **kw)  # own AdamW state
        else:
            self.train_opt = None
        self.stats: dict = {}
        self._grad_acc: list[torch.Tensor] | None = None
        if self.meta is not None:
            tc, m = cfg.train, self.meta
            streams = prep.valid_streams if m.val_source == "valid" else prep.train_streams
            micro, _ = resolve_val_micro(m.val_batch_size, m.val_micro_batch, engine.train_micro_batch_size_per_gpu(),
                                         world_size)  # problems were refused at pre-flight
            self.val = MetaValBatches(streams, m.val_source, tc.seq_len, m.val_batch_size, micro, world_size, rank,
                                      cfg.mlm, prep.vocab.size, prep.vocab.mask_id, N_SPECIAL, tc.seed, cfg.lang_ids)
            self.fresh = None
            if m.phi_batch == "fresh":  # the train batch's layout, drawn independently of training's order
                tm, ga = engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps()
                self.fresh = MetaValBatches(prep.train_streams, "train", tc.seq_len, tm * ga * world_size, tm,
                                            world_size, rank, cfg.mlm, prep.vocab.size, prep.vocab.mask_id, N_SPECIAL,
                                            tc.seed, cfg.lang_ids, purpose="meta-fresh")
        self._source_logged = False

    def meta_due(self, step: int) -> bool:
        """Whether ``step`` has a meta (φ) update (every ``meta.every`` steps)."""
        return self.meta is not None and step % self.meta.every == 0

    def _reduce_mean(self, tensors: list[torch.Tensor]) -> None:
        all_reduce_mean_(tensors, self.world)

    def meta_inputs(self, step: int, lang: int, batches: list[MLMBatch]) -> MetaInputs:
        """This rank's batches for the φ step of ``step``: the θ step's batch or a fresh one, and S's validation."""
        m, dev = self.meta, self.engine.device
        langs = self.val.languages(step, lang, m.include_self, m.langs_per_step)
        val = [(j, [b.to(dev) for b in self.val.batches(step, j)]) for j in langs]
        if m.phi_batch == "fresh":
            return MetaInputs([b.to(dev) for b in self.fresh.batches(step, lang)], val, "fresh")
        return MetaInputs(batches, val, "train")

    def meta_update(self, step: int, lang: int, batches: list[MLMBatch], lr: float, seed_hook) -> dict:
        """Algorithm 1's φ step for language ``lang``: φ_i ← φ_i − α ∇φ_i (1/|S|) Σ_j L_val^j(θ', φ_j).

        Runs at the module's current θ: θ^(t) with ``meta.order: phi_first``, θ^(t+1) with ``theta_first``.
        A collective: every rank must call it (gradients and statistics are averaged over ranks).

        Returns:
            statistics: meta_train_loss, meta_val_loss (global means, nats), phi_grad_norm, phi_step_skipped,
            v_norm, fd_eps, second_order_share (‖β·H·v‖ / ‖∂φF‖), fd_changed_fraction and
            virtual_changed_fraction (working precision in bf16/fp16 only; None where not applicable).
        """
        m, dev = self.meta, self.engine.device
        beta = lr if m.beta is None else m.beta
        alpha = lr if m.alpha is None else m.alpha
        inputs = self.meta_inputs(step, lang, batches)
        fp32 = m.precision == "fp32"
        params = meta_params(self.engine, self.split, self.opt.masters, m.precision)
        if not self._source_logged:
            log.info("meta step (%s precision, %s hypergradient%s): θ values from %s", m.precision, m.hypergradient,
                     f", {m.fd_scheme} differences" if m.hypergradient == "finite_difference" else "", params.source)
            self._source_logged = True
        # fp32 passes need no loss scale: it only guards 16-bit gradients against underflow
        scale = 1.0 if fp32 else loss_scale(self.engine)
        with fp32_matmuls() if fp32 else contextlib.nullcontext():
            hg = hypergradient(self.engine.module, params, lang, inputs, beta, method=m.hypergradient,
                               fd_scale=m.fd_scale, fd_scheme=m.fd_scheme, reduce_mean=self._reduce_mean, scale=scale,
                               before_forward=seed_hook, ops=fd_ops(dev))
        res = self.opt.step(lang, hg.grad, alpha)
        if res["skipped"]:
            self._on_nonfinite(step, scale, fp32)
        _, direct_norm, second_norm = hg.norms()
        losses = torch.tensor([hg.train_loss, hg.val_loss], dtype=torch.float64, device=dev)
        self._reduce_mean([losses])  # logged as global-batch means, like the train loss
        train_loss, val_loss = losses.tolist()
        self.stats = {"meta_train_loss": train_loss, "meta_val_loss": val_loss, "phi_grad_norm": res["grad_norm"],
                      "phi_step_skipped": float(res["skipped"]), "v_norm": hg.v_norm, "fd_eps": hg.eps,
                      "second_order_share": second_norm / direct_norm if direct_norm > 0 else None,
                      "fd_changed_fraction": hg.changed_fraction,
                      "virtual_changed_fraction": hg.virtual_changed_fraction}
        return self.stats

    def _on_nonfinite(self, step: int, scale: float, fp32: bool) -> None:
        """A non-finite hypergradient: the φ step was skipped; in 16-bit passes, tell DeepSpeed's loss scaler.

        With ``meta.precision: fp32`` the passes use no loss scale, so an overflow there says nothing about
        the scale and the scaler is deliberately left alone (the θ step still checks its own gradients).
        """
        scaler = None if fp32 else loss_scaler(self.engine)
        if scaler is None:
            log.warning("step %d: non-finite meta hypergradient; φ step skipped", step)
            return
        scaler.update_scale(True)  # the same signal DeepSpeed gives itself after an overflowing θ step
        log.warning("step %d: non-finite meta hypergradient at loss scale %g; φ step skipped, loss scale now %g",
                    step, scale, float(getattr(scaler, "cur_scale", float("nan"))))

    def train_leaves(self, lang: int) -> dict[str, torch.Tensor] | None:
        """Fresh leaves for φ_lang when the θ step should also train it (joint rows), else None."""
        if self.train_opt is None:
            return None
        return {n: q.detach().requires_grad_(True) for n, q in self.split.phi[lang].items()}

    def forward(self, leaves: dict[str, torch.Tensor], mb: MLMBatch, lang: int) -> torch.Tensor:
        """The train loss through ``engine.module`` with φ_lang replaced by ``leaves``."""
        return mlm_loss(self.engine.module, leaves, mb, lang)

    def accumulate(self, leaves: dict[str, torch.Tensor]) -> None:
        """Move the micro-batch's φ gradients from the leaves (module dtype) into fp32 accumulators."""
        if self._grad_acc is None:
            self._grad_acc = [torch.zeros(t.shape, dtype=torch.promote_types(t.dtype, torch.float32), device=t.device)
                              for t in leaves.values()]
        for acc, t in zip(self._grad_acc, leaves.values()):
            if t.grad is not None:
                acc += t.grad
                t.grad = None

    def apply_train_grads(self, lang: int, leaves: dict[str, torch.Tensor], lr: float, scale: float) -> None:
        """Average φ_lang's accumulated train-loss gradients over ranks, remove the loss scale, step φ_lang.

        A collective (all ranks). Skipped when DeepSpeed skipped the θ step (fp16 overflow), so θ and φ
        stay in step.
        """
        self.accumulate(leaves)
        grads, self._grad_acc = self._grad_acc, None
        self._reduce_mean(grads)
        if not self.engine.was_step_applied():
            return
        res = self.train_opt.step(lang, [g / scale for g in grads], lr)
        self.stats["phi_train_grad_norm"] = res["grad_norm"]

    def state_dict(self) -> dict:
        """φ's masters and AdamW state(s) for a checkpoint (masters once, even with two optimisers)."""
        second = self.train_opt not in (None, self.opt)
        return {"opt": self.opt.state_dict(),
                "train_opt": self.train_opt.state_dict(include_masters=False) if second else None}

    def load_state_dict(self, sd: dict) -> None:
        """Restore :meth:`state_dict` and write φ's masters into the module."""
        self.opt.load_state_dict(sd["opt"])
        if sd.get("train_opt") is not None and self.train_opt not in (None, self.opt):
            self.train_opt.load_state_dict(sd["train_opt"])


__all__ = ["PhiTraining", "loss_scale", "loss_scaler"]
