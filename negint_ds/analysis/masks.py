"""Per-language L0 masks on a frozen pretrained model (Wang et al. 2020 §3.1 "Parameter Sharing", Eq. 1).

For one language, with the pretrained weights θ frozen, learn the locations π = log α of Hard Concrete gates z
(:mod:`.hard_concrete`, Louizos et al. 2018) by minimising

    E_{z ~ q(z|π)} [ (1/N) Σ_i L_MLM(f(x_i; θ ⊙ z)) ] + λ · E[‖θ̃‖₀] / (number of maskable parameters)     (Eq. 1)

with x_i windows of that language's train stream. Then π, one value per parameter group, says how much the
language needs each group (positive: keep, negative: prune); :mod:`.mask_similarity` compares π across
languages and seeds (Fig. 4a/4b).

Parameter groups (``MaskConfig.groups``):

* ``structured`` (default): every attention head and every FFN neuron of every layer. Gate h of layer l's
  attention multiplies the columns h·D_h … (h+1)·D_h − 1 of ``attn.out.weight`` — exactly the columns that
  head h's output feeds (the heads are concatenated in order before ``out``), so it scales head h's output;
  gate j of the FFN multiplies column j of ``ffn.lin2.weight``, i.e. neuron j's output.
* ``matrix``: one gate per weight matrix (``attn.qkv``, ``attn.out``, ``ffn.lin1``, ``ffn.lin2`` of every layer).

Biases, LayerNorms and embeddings are never masked (a group is a set of weight entries; a bias is not any
one head's or neuron's). θ̃ = θ ⊙ z is built literally: the masked weights are passed to the frozen module
through ``torch.func.functional_call``, so the pretrained parameters are never written to.

The L0 term is normalised to the expected *fraction* of maskable parameters kept,
Σ_g |g|·P(z_g ≠ 0) / Σ_g |g| with |g| the number of weight entries gate g multiplies (D·D_h for a head, D
for a neuron, the matrix size for a matrix gate). It lies in [0, 1] whatever the model size or grouping, so
λ is scale-free: λ = 1 means "keeping every maskable parameter costs 1 nat of MLM loss per token".

Training goes through DeepSpeed (ZeRO 0–2; gates only in the optimiser), one language per run, data-parallel:
global micro-batch m of step t is processed by rank m mod world and drawn, with its MLM corruption and its
gate noise, from seeds derived from (seed, "l0_mask", lang, t, m), so any world size sees the same data.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..atomic import atomic_write_json
from ..config.deepspeed import precision, zero_stage
from ..data.batches import eval_batches
from ..data.vocab import N_SPECIAL
from ..meta.passes import mlm_loss
from ..mlm import MLMBatch, mask_tokens
from ..model import FeedForward, MaskedLM, SelfAttention
from ..seeding import derive_seed
from .hard_concrete import HardConcreteGates, deterministic_mask
from .mask_layout import LOG_ALPHA_FILE, SUMMARY_FILE, mask_run_dir
from .pretrained import AnalysisError, Pretrained

log = logging.getLogger("negint_ds")

GROUP_KINDS = ("structured", "matrix")


# --------------------------------------------------------------------------------------------- configuration
@dataclass
class MaskConfig:
    """Settings of one mask run (everything but the language and the seed, which name the run directory).

    Attributes:
        steps: optimiser steps on the gates.
        lr: learning rate of the gates' optimiser (DeepSpeed's configured optimiser type, constant rate,
            weight decay 0: decay would pull every π towards 0, i.e. towards ẑ = 0.5, and blur the comparison).
            Adam moves each log α by about ``lr`` per step, so steps·lr bounds how far π can travel.
        lambda_l0: λ of Eq. 1, on the normalised L0 term (module docstring): nats of MLM loss per token that
            keeping *all* maskable parameters costs.
        groups: ``structured`` (heads and FFN neurons) or ``matrix`` (one gate per weight matrix).
        init_drop_rate: p of the gates' initialisation log α ~ N(log(1−p) − log p, 0.01²); see
            :class:`~negint_ds.analysis.hard_concrete.HardConcreteGates` for why 0.1 rather than 0.5.
        sequences_per_step: windows of ``train.seq_len`` tokens per optimiser step, over all ranks.
        micro_batch: windows per forward, each with its own draw of the gate noise z. Fixed here rather than
            taken from the DeepSpeed config so that the global micro-batches, and so the run, are the same for
            every world size: a step's ``sequences_per_step / micro_batch`` micro-batches are shared out over
            the ranks (their number must be a multiple of the world size) and accumulated.
        eval_sequences: validation windows scored at the end (None: the pretraining recipe's
            ``train.eval_sequences``, i.e. the windows and MLM masks its own validation used).
        eval_batch_size: windows per validation forward.
        log_every: steps between logged (rank-averaged) objective values.
    """

    steps: int = 1000
    lr: float = 0.05
    lambda_l0: float = 1.0
    groups: str = "structured"
    init_drop_rate: float = 0.1
    sequences_per_step: int = 32
    micro_batch: int = 8
    eval_sequences: int | None = None
    eval_batch_size: int = 16
    log_every: int = 50

    def validate(self) -> list[str]:
        """Every problem with these settings (empty when valid), each naming the field."""
        p = []
        for name in ("steps", "sequences_per_step", "micro_batch", "eval_batch_size", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                p.append(f"{name}: must be a positive integer, got {v!r}")
        if self.eval_sequences is not None and (isinstance(self.eval_sequences, bool)
                                                or not isinstance(self.eval_sequences, int)
                                                or self.eval_sequences <= 0):
            p.append(f"eval_sequences: must be a positive integer or None, got {self.eval_sequences!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            p.append(f"lr: must be a positive finite number, got {self.lr!r}")
        if not (isinstance(self.lambda_l0, (int, float)) and math.isfinite(self.lambda_l0) and self.lambda_l0 >= 0):
            p.append(f"lambda_l0: must be a finite number >= 0, got {self.lambda_l0!r}")
        if (isinstance(self.micro_batch, int) and isinstance(self.sequences_per_step, int) and self.micro_batch > 0
                and self.sequences_per_step % self.micro_batch):
            p.append(f"sequences_per_step: {self.sequences_per_step} is not a multiple of micro_batch={self.micro_batch}")
        if self.groups not in GROUP_KINDS:
            p.append(f"groups: must be one of {GROUP_KINDS}, got {self.groups!r}")
        if not (isinstance(self.init_drop_rate, (int, float)) and 0 < self.init_drop_rate < 1):
            p.append(f"init_drop_rate: must be in (0, 1), got {self.init_drop_rate!r}")
        return p


# --------------------------------------------------------------------------------------------- groups
@dataclass(frozen=True)
class GateGroup:
    """A set of gates that mask one weight tensor of the base module.

    Attributes:
        name: key of its π in ``log_alpha.safetensors``: ``layer{l}.attn`` (heads), ``layer{l}.ffn`` (neurons),
            or ``layer{l}.attn.qkv`` / ``.attn.out`` / ``.ffn.lin1`` / ``.ffn.lin2`` (matrix gates).
        param: the masked parameter's name in the base module, e.g. ``encoder.layers.0.attn.out.weight``.
        n_gates: number of gates (heads H, FFN width, or 1).
        dim: the tensor axis whose entries the gates cover, in consecutive blocks of ``block`` entries (gate k
            covers entries k·block … (k+1)·block − 1); None: a single gate multiplies the whole tensor.
        block: entries of axis ``dim`` per gate (D_h for heads, 1 for neurons).
        numel_per_gate: weight entries one gate multiplies, |g| in the L0 normalisation.
    """

    name: str
    param: str
    n_gates: int
    dim: int | None
    block: int
    numel_per_gate: int

    @property
    def component(self) -> str:
        """``attn`` or ``ffn``."""
        return self.name.split(".")[1]

    @property
    def layer(self) -> int:
        """The encoder layer index."""
        return int(self.name.split(".")[0][len("layer"):])


def masked_weight(weight: torch.Tensor, z: torch.Tensor, group: GateGroup) -> torch.Tensor:
    """θ̃ = θ ⊙ z for one group: ``weight`` times its gates broadcast over the covered axis.

    Args:
        weight: the parameter (any shape, e.g. (D, D) for ``attn.out.weight``).
        z: (n_gates,) gate values; cast to ``weight``'s dtype.
        group: which axis and block size the gates cover.

    Returns:
        A new tensor of ``weight``'s shape and dtype (``weight`` is not modified); differentiable in ``z``.
    """
    z = z.to(weight.dtype)
    if group.dim is None:
        return weight * z.reshape(())
    full = z.repeat_interleave(group.block) if group.block > 1 else z  # (weight.shape[dim],)
    shape = [1] * weight.ndim
    shape[group.dim] = -1
    return weight * full.view(shape)


def build_groups(model: MaskedLM, kind: str = "structured") -> list[GateGroup]:
    """The gate groups of ``model`` for grouping ``kind`` (see the module docstring), layer by layer.

    Raises:
        AnalysisError: ``kind`` is unknown, or a layer's attention or FFN is language-specific
            (:class:`~negint_ds.model.PerLanguage`): Eq. 1 is an analysis of *shared* parameters, and
            per-language copies would be masked for one language only.
    """
    if kind not in GROUP_KINDS:
        raise AnalysisError(f"unknown mask grouping {kind!r}; expected one of {GROUP_KINDS}")
    groups = []
    for l, layer in enumerate(model.encoder.layers):
        attn, ffn = layer.attn, layer.ffn
        for what, mod, cls in (("attn", attn, SelfAttention), ("ffn", ffn, FeedForward)):
            if not isinstance(mod, cls):
                raise AnalysisError(f"layer {l}'s {what} is language-specific ({type(mod).__name__}, "
                                    f"model.language_specific={list(model.dims.cfg.language_specific)}): L0 masks "
                                    f"analyse shared parameters only; use a model whose attention and FFN are shared")
        pre = f"encoder.layers.{l}"
        if kind == "structured":
            d = attn.out.weight.shape[0]
            groups.append(GateGroup(f"layer{l}.attn", f"{pre}.attn.out.weight", attn.heads, 1, attn.head_dim,
                                    d * attn.head_dim))
            groups.append(GateGroup(f"layer{l}.ffn", f"{pre}.ffn.lin2.weight", ffn.lin2.weight.shape[1], 1, 1,
                                    ffn.lin2.weight.shape[0]))
        else:
            for comp, lin in (("attn", "qkv"), ("attn", "out"), ("ffn", "lin1"), ("ffn", "lin2")):
                w = model.get_parameter(f"{pre}.{comp}.{lin}.weight")
                groups.append(GateGroup(f"layer{l}.{comp}.{lin}", f"{pre}.{comp}.{lin}.weight", 1, None, 1,
                                        w.numel()))
    return groups


# --------------------------------------------------------------------------------------------- the objective
class GatedObjective(nn.Module):
    """A frozen base module, Hard Concrete gates over some of its weights, and Eq. 1's objective as ``forward``.

    Generic over the base: ``loss_fn(base, overrides, data)`` computes the task loss of ``base`` with the
    parameters named in ``overrides`` replaced (via ``torch.func.functional_call``); for a
    :class:`~negint_ds.model.MaskedLM` it is the mean MLM loss (:func:`mlm_objective`).

    ``forward(data, noise_seed=None)`` returns the 0-d objective ``task + λ · l0`` (fp32 for an fp32 base) where
    l0 = Σ_g |g|·P(z_g ≠ 0) / Σ_g |g| (closed form, no noise), with z sampled in training mode (noise from a
    generator seeded with ``noise_seed``, on the gates' device) and the deterministic mask in eval mode. The
    two terms of the last call are kept, detached, in ``last_terms`` (``task``, ``l0``) for logging.

    The base is frozen (``requires_grad=False``) and kept in eval mode even when this module trains: the
    gates are learned for the network as it is used at test time, without dropout noise on top of the gate
    noise. The base's parameters are never written to.

    Raises:
        ValueError: no groups, a group names a parameter the base lacks, or two groups mask the same parameter.
    """

    def __init__(self, base: nn.Module, groups: Sequence[GateGroup],
                 loss_fn: Callable[[nn.Module, dict[str, torch.Tensor], Any], torch.Tensor], lambda_l0: float,
                 init_drop_rate: float = 0.1, generator: torch.Generator | None = None):
        super().__init__()
        if not groups:
            raise ValueError("no gate groups given")
        params = [g.param for g in groups]
        if len(set(params)) != len(params):
            raise ValueError(f"two gate groups mask the same parameter: {params}")
        names = dict(base.named_parameters())
        for g in groups:
            if g.param not in names:
                raise ValueError(f"gate group {g.name}: the base module has no parameter {g.param!r}")
            size = names[g.param].shape[g.dim] if g.dim is not None else 1
            if g.n_gates * g.block != size:
                raise ValueError(f"gate group {g.name}: {g.n_gates} gates × block {g.block} does not cover "
                                 f"{g.param} (size {size} along dim {g.dim})")
        base.requires_grad_(False)
        self.base = base
        self.groups = tuple(groups)
        self.gates = nn.ModuleList(HardConcreteGates(g.n_gates, init_drop_rate, generator=generator) for g in groups)
        self.loss_fn = loss_fn
        self.lambda_l0 = float(lambda_l0)
        self.total_numel = sum(g.n_gates * g.numel_per_gate for g in groups)
        self.n_gates = sum(g.n_gates for g in groups)
        self.last_terms: dict[str, torch.Tensor] = {}
        self.base.eval()

    def train(self, mode: bool = True) -> "GatedObjective":
        super().train(mode)
        self.base.eval()  # see the class docstring: no dropout in the frozen network
        return self

    def gate_parameters(self) -> list[nn.Parameter]:
        """The learnable log α tensors, in group order (what the optimiser gets)."""
        return [g.log_alpha for g in self.gates]

    def masks(self, noise_seed: int | None = None) -> list[torch.Tensor]:
        """z per group ((n_gates,) each): samples in training mode, deterministic masks in eval mode."""
        if not self.training:
            return [g() for g in self.gates]
        device = self.gates[0].log_alpha.device
        gen = torch.Generator(device=device).manual_seed(noise_seed) if noise_seed is not None else None
        u = torch.rand(self.n_gates, generator=gen, device=device, dtype=torch.float32)  # one draw for all gates
        return [g(u=part) for g, part in zip(self.gates, u.split([g.n for g in self.gates]))]

    def overrides(self, zs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """{parameter name: θ ⊙ z} for every group (Eq. 1's θ̃ restricted to the masked tensors)."""
        return {g.param: masked_weight(self.base.get_parameter(g.param), z, g) for g, z in zip(self.groups, zs)}

    def expected_l0_fraction(self) -> torch.Tensor:
        """Σ_g |g|·P(z_g ≠ 0) / Σ_g |g|: 0-d fp32 in (0, 1), differentiable in every log α."""
        kept = sum(g.numel_per_gate * gate.expected_l0().float().sum() for g, gate in zip(self.groups, self.gates))
        return kept / self.total_numel

    def forward(self, data: Any, noise_seed: int | None = None) -> torch.Tensor:
        task = self.loss_fn(self.base, self.overrides(self.masks(noise_seed)), data)
        l0 = self.expected_l0_fraction()
        self.last_terms = {"task": task.detach(), "l0": l0.detach()}
        return task + self.lambda_l0 * l0

    @torch.no_grad()
    def log_alpha(self) -> dict[str, torch.Tensor]:
        """{group name: fp32 CPU copy of π = log α}; under DeepSpeed 16-bit training, its fp32 master values."""
        out = {}
        for g, gate in zip(self.groups, self.gates):
            out[g.name] = _fp32_value(gate.log_alpha).detach().float().cpu().clone()
        return out


def _fp32_value(p: nn.Parameter) -> torch.Tensor:
    """The fp32 master of ``p`` when DeepSpeed keeps one (16-bit training), else ``p`` itself."""
    try:
        from deepspeed.utils import safe_get_full_fp32_param

        v = safe_get_full_fp32_param(p)
        if v is not None:
            return v
    except Exception:  # not managed by a DeepSpeed optimiser (e.g. a plain module in a test)
        pass
    return p


def mlm_objective(lang_index: int) -> Callable[[nn.Module, dict[str, torch.Tensor], MLMBatch], torch.Tensor]:
    """``loss_fn`` for :class:`GatedObjective` over a :class:`~negint_ds.model.MaskedLM`: the mean MLM
    cross-entropy (nats per predicted token) of a micro-batch whose rows are all language ``lang_index``."""

    def loss(base: nn.Module, overrides: dict[str, torch.Tensor], batch: MLMBatch) -> torch.Tensor:
        return mlm_loss(base, overrides, batch, lang_index)

    return loss


# --------------------------------------------------------------------------------------------- fitting
def fit_gates(engine, micro_batches: Callable[[int], Sequence[tuple[Any, int | None]]], steps: int,
              log_every: int = 50, progress: bool = False, desc: str = "") -> list[dict]:
    """Minimise ``engine``'s objective over the gates for ``steps`` optimiser steps.

    Works for any DeepSpeed engine (or object with the same ``__call__``/``backward``/``step`` protocol) whose
    module's ``forward(data, noise_seed=...)`` returns the scalar objective; DeepSpeed averages gradients over
    gradient-accumulation micro-batches and ranks and applies its optimiser at each accumulation boundary.

    Args:
        engine: a DeepSpeed engine over e.g. a :class:`GatedObjective`.
        micro_batches: ``micro_batches(step)`` → this rank's ``gradient_accumulation_steps`` pairs
            (data on the engine's device, gate-noise seed) for that step.
        steps: optimiser steps.
        log_every: steps between history records.
        progress: show a progress bar (rank 0, interactive stderr only).

    Returns:
        History records ``{"step", "objective", **module.last_terms}``: means over the logging window's
        micro-batches of every rank (a collective every ``log_every`` steps: call on all ranks).

    Raises:
        ValueError: ``micro_batches`` returned a number of micro-batches other than the engine's accumulation.
    """
    import sys

    from tqdm import tqdm

    module = getattr(engine, "module", engine)
    accum = engine.gradient_accumulation_steps() if hasattr(engine, "gradient_accumulation_steps") else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    engine.train()
    history: list[dict] = []
    window: dict[str, float] = {}
    n_window = 0
    pbar = tqdm(total=steps, unit="step", dynamic_ncols=True, desc=desc,
                disable=rank != 0 or not progress or not sys.stderr.isatty())
    for step in range(steps):
        micro = micro_batches(step)
        if len(micro) != accum:
            raise ValueError(f"step {step}: {len(micro)} micro-batches for gradient_accumulation_steps={accum}")
        for data, noise_seed in micro:
            loss = engine(data, noise_seed=noise_seed)
            engine.backward(loss)
            engine.step()
            terms = {"objective": loss.detach(), **getattr(module, "last_terms", {})}
            for k, v in terms.items():
                window[k] = window.get(k, 0.0) + v.float()
            n_window += 1
        pbar.update(1)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            keys = sorted(window)
            device = window[keys[0]].device
            vals = torch.stack([window[k] for k in keys] + [torch.tensor(float(n_window), device=device)]).double()
            if dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(vals)
            vals = vals.tolist()
            rec = {"step": step + 1, **{k: v / vals[-1] for k, v in zip(keys, vals[:-1])}}
            history.append(rec)
            pbar.set_postfix(objective=f"{rec['objective']:.4f}")
            log.info("%s step %d/%d: objective %.4f (%s)", desc or "gates", step + 1, steps, rec["objective"],
                     ", ".join(f"{k} {v:.4f}" for k, v in rec.items() if k not in ("step", "objective")))
            window, n_window = {}, 0
    pbar.close()
    return history


# --------------------------------------------------------------------------------------------- data
class LanguageMicroBatches:
    """This rank's MLM micro-batches of one language's train stream for each step of a mask run.

    Global micro-batch m of step t (m = a·world + rank for accumulation step a) holds ``micro`` windows of
    ``seq_len`` tokens starting at uniform random offsets in the stream, corrupted by
    :func:`~negint_ds.mlm.mask_tokens`; the offsets and the corruption come from one CPU generator seeded with
    ``derive_seed(seed, "l0_mask", lang, t, m)``, the gate noise from ``derive_seed(seed, "l0_mask", lang, t, m,
    "gates")``. Every world size with the same global batch therefore sees the same micro-batches.

    Raises:
        AnalysisError: the stream is shorter than one window.
    """

    def __init__(self, tokens: np.ndarray, lang: str, lang_index: int, seq_len: int, micro: int, accum: int,
                 world: int, rank: int, mlm, vocab_size: int, mask_id: int, seed: int, device: torch.device):
        if len(tokens) < seq_len:
            raise AnalysisError(f"{lang}: the train stream has {len(tokens)} tokens, fewer than seq_len={seq_len}")
        self.tokens, self.lang, self.lang_index, self.seq_len = tokens, lang, lang_index, seq_len
        self.micro, self.accum, self.world, self.rank = micro, accum, world, rank
        self.mlm, self.vocab_size, self.mask_id, self.seed, self.device = mlm, vocab_size, mask_id, seed, device

    def global_micro_batch(self, step: int, m: int) -> tuple[MLMBatch, int]:
        """(batch on CPU, gate-noise seed) of global micro-batch ``m`` at ``step``."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, "l0_mask", self.lang, step, m))
        starts = torch.randint(0, len(self.tokens) - self.seq_len + 1, (self.micro,), generator=g).tolist()
        rows = np.stack([np.asarray(self.tokens[s:s + self.seq_len], dtype=np.int64) for s in starts])
        ids, pos, tgt = mask_tokens(torch.from_numpy(rows), self.mlm, self.vocab_size, self.mask_id, N_SPECIAL, g)
        batch = MLMBatch(ids, torch.full((self.micro,), self.lang_index, dtype=torch.int64), pos, tgt)
        return batch, derive_seed(self.seed, "l0_mask", self.lang, step, m, "gates")

    def __call__(self, step: int) -> list[tuple[MLMBatch, int]]:
        out = []
        for a in range(self.accum):
            batch, noise = self.global_micro_batch(step, a * self.world + self.rank)
            out.append((batch.to(self.device), noise))
        return out


@torch.no_grad()
def valid_loss(objective: GatedObjective, batches: list[tuple[MLMBatch, bool]], lang_index: int, use_mask: bool,
               device: torch.device) -> tuple[float, int]:
    """Mean MLM loss (nats per predicted token) of ``objective.base`` on validation batches, over all ranks.

    Args:
        objective: its base is scored with the deterministic masks (``use_mask``) or unmasked.
        batches: from :func:`~negint_ds.data.batches.eval_batches` (entries with ``counts=False`` are not scored).

    Returns:
        (mean loss, predicted tokens) summed over ranks (a collective when distributed).
    """
    was = objective.training
    objective.eval()
    try:
        overrides = objective.overrides(objective.masks()) if use_mask else {}
        total = torch.zeros(2, dtype=torch.float64, device=device)
        for b, scored in batches:
            if not scored:
                continue
            losses = mlm_loss(objective.base, overrides, b.to(device), lang_index, reduction="none")
            total += torch.stack([losses.double().sum(), torch.tensor(float(losses.numel()), device=device,
                                                                      dtype=torch.float64)])
    finally:
        objective.train(was)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total)
    s, n = total.tolist()
    return s / max(n, 1.0), int(n)


# --------------------------------------------------------------------------------------------- entry point
def _batch_layout(cfg: MaskConfig, world: int) -> tuple[int, int]:
    """(micro-batch per rank, accumulation steps): the step's ``sequences_per_step / micro_batch`` global
    micro-batches shared out over ``world`` ranks (the same micro-batches whatever the world size).

    Raises:
        AnalysisError: the number of micro-batches per step is not a multiple of the world size.
    """
    n = cfg.sequences_per_step // cfg.micro_batch
    if n % world:
        raise AnalysisError(f"sequences_per_step={cfg.sequences_per_step} / micro_batch={cfg.micro_batch} = {n} "
                            f"micro-batches per step cannot be shared out over {world} ranks; make it a multiple "
                            f"of the world size (e.g. --set micro_batch=...)")
    return cfg.micro_batch, n // world


def mask_ds_config(ds_config: dict, cfg: MaskConfig, world: int) -> dict:
    """The DeepSpeed config of a mask run: the caller's, with the batch layout of ``cfg.sequences_per_step`` and
    ``cfg.micro_batch`` (the config's own micro-batch and accumulation are replaced),
    the optimiser's lr set to ``cfg.lr`` and weight decay 0, and no scheduler (constant lr).

    Raises:
        AnalysisError: ZeRO-3 (it would partition the frozen base, which the masked forward reads directly
            through ``functional_call``; the gates are tiny, so stage 2 loses nothing), or a batch layout that
            does not divide.
    """
    if zero_stage(ds_config) == 3:
        raise AnalysisError("ZeRO stage 3 is not supported for L0 mask runs: it partitions the frozen base "
                            "model's weights, which the masked forward reads whole; use ZeRO stage 0, 1 or 2 "
                            "(the gates are all that is optimised)")
    micro, accum = _batch_layout(cfg, world)
    ds = copy.deepcopy(ds_config)
    ds.update(train_batch_size=cfg.sequences_per_step, train_micro_batch_size_per_gpu=micro,
              gradient_accumulation_steps=accum)
    opt = ds.get("optimizer") or {"type": "AdamW"}
    opt = {**opt, "params": {**opt.get("params", {}), "lr": cfg.lr, "weight_decay": 0.0}}
    ds["optimizer"] = opt
    ds.pop("scheduler", None)
    ds.pop("tensorboard", None)
    ds.setdefault("steps_per_print", 10 ** 9)
    return ds


def _existing_on_rank0(run_dir: str, identity: dict, rank: int) -> dict | None:
    """:func:`_existing` decided by rank 0 and shared with every rank, its error included (a rank-0-only raise
    would leave the other ranks waiting in the broadcast)."""
    box: list = [None]
    if rank == 0:
        try:
            box[0] = ("ok", _existing(run_dir, identity))
        except AnalysisError as e:
            box[0] = ("error", str(e))
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise AnalysisError(value)
    return value


def _existing(run_dir: str, identity: dict) -> dict | None:
    """The finished run's summary, None for a fresh (absent or empty) directory.

    Raises:
        AnalysisError: the directory holds a run with other settings, or files of an unfinished run.
    """
    summary = os.path.join(run_dir, SUMMARY_FILE)
    if os.path.isfile(summary):
        with open(summary, encoding="utf-8") as f:
            done = json.load(f)
        theirs = {k: done.get(k) for k in identity}
        if theirs != identity:
            diff = {k: (theirs[k], identity[k]) for k in identity if theirs[k] != identity[k]}
            raise AnalysisError(f"{run_dir} holds a finished mask run with other settings (saved vs asked: {diff}); "
                                f"use another output directory or delete it")
        return done
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        raise AnalysisError(f"{run_dir} holds an unfinished mask run (no {SUMMARY_FILE}; files "
                            f"{sorted(os.listdir(run_dir))}); mask runs are not resumable mid-way — delete the "
                            f"directory to run it again")
    return None


def train_language_mask(pre: Pretrained, lang: str, seed: int, cfg: MaskConfig, ds_config: dict, out_dir: str,
                        progress: bool = True) -> dict:
    """Learn the L0 masks π of language ``lang`` on the frozen model ``pre`` and save them (Eq. 1).

    A collective when a process group of several ranks exists (data-parallel; every rank calls it with the
    same arguments); rank 0 writes. The run is a pure function of (model, lang, seed, cfg, global batch).

    Writes ``out_dir/<lang>_seed<seed>/`` (atomically, ``summary.json`` last, so its presence marks a finished
    run):

    * ``log_alpha.safetensors``: fp32 π per group (keys as :attr:`GateGroup.name`: ``layer{l}.attn`` (H,),
      ``layer{l}.ffn`` (ffn_dim,), or ``layer{l}.attn.qkv`` etc. (1,)); metadata lang, seed, groups.
    * ``summary.json``: the identity (lang, seed, groups, lambda_l0, steps, config, pretrained run and step),
      ``sparsity`` (fraction of gates whose deterministic mask is 0), ``sparsity_params`` (fraction of maskable
      weights they cover), ``kept_fraction_deterministic``, ``expected_l0`` (the normalised L0 term at the
      end), ``valid_loss_masked`` / ``valid_loss_unmasked`` (mean MLM nats per predicted token on the
      language's validation windows with the deterministic masks / without masks; same windows and MLM
      corruption as the pretraining run's validation), ``valid_tokens``, per-group pruned counts, the
      training history, timing and the DeepSpeed precision/ZeRO stage.

    Args:
        pre: the pretrained model (not modified: the run works on a copy of its module).
        lang: a language of the model.
        seed: the run's seed (gate initialisation, batches, MLM corruption, gate noise).
        cfg: the run's settings.
        ds_config: DeepSpeed config dict (e.g. ``ds_configs/cpu_zero2.json``), see :func:`mask_ds_config`.
        out_dir: parent directory of the run directory.
        progress: progress bar on rank 0 (interactive stderr only).

    Returns:
        The summary. When ``summary.json`` already exists with the same identity (lang, seed, settings other
        than ``log_every``, pretrained run and step) it is read back and nothing is trained (resumable grids).

    Raises:
        AnalysisError: invalid ``cfg`` (every problem listed), unknown language, ZeRO-3, language-specific
            attention/FFN, a train stream shorter than one window, or an output directory holding another or an
            unfinished run.
    """
    import deepspeed

    from ..train.dist import on_rank0

    problems = cfg.validate()
    if problems:
        raise AnalysisError("invalid MaskConfig: " + "; ".join(problems))
    lang_index = pre.lang_index(lang)
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    ds = mask_ds_config(ds_config, cfg, world)
    groups = build_groups(pre.model, cfg.groups)
    run_dir = mask_run_dir(os.path.abspath(out_dir), lang, seed)
    # what the result depends on (log_every only changes how often the history is recorded)
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "log_every"}
    identity = {"lang": lang, "seed": seed, "groups": cfg.groups, "lambda_l0": cfg.lambda_l0, "steps": cfg.steps,
                "config": settings, "pretrained": pre.run_dir, "pretrained_step": pre.step}
    done = _existing_on_rank0(run_dir, identity, rank)
    if done is not None:
        log.info("l0 mask %s seed %d: %s already finished; skipping", lang, seed, run_dir)
        return done

    t0 = time.time()
    seq_len = pre.cfg.train.seq_len
    train_stream = pre.stream(lang, "train")
    valid_stream = pre.stream(lang, "valid")
    init = torch.Generator().manual_seed(derive_seed(seed, "l0_mask", lang, "init"))
    # A private copy: DeepSpeed moves (and, for 16-bit configs, casts) the module it is given, and the caller's
    # model must stay as loaded. Freezing happens on the copy.
    objective = GatedObjective(copy.deepcopy(pre.model), groups, mlm_objective(lang_index), cfg.lambda_l0,
                               cfg.init_drop_rate, generator=init)
    engine, _, _, _ = deepspeed.initialize(model=objective, model_parameters=objective.gate_parameters(), config=ds)
    try:
        device = engine.device
        batches = LanguageMicroBatches(train_stream.tokens, lang, lang_index, seq_len,
                                       engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps(),
                                       world, rank, pre.cfg.mlm, pre.vocab.size, pre.vocab.mask_id, seed, device)
        t_fit = time.time()
        history = fit_gates(engine, batches, cfg.steps, cfg.log_every, progress, desc=f"l0 mask {lang} s{seed}")
        fit_s = time.time() - t_fit
        valid = eval_batches(valid_stream, lang_index, seq_len,
                             cfg.eval_sequences if cfg.eval_sequences is not None else pre.cfg.train.eval_sequences,
                             cfg.eval_batch_size, rank, world, pre.cfg.mlm, pre.vocab.size, pre.vocab.mask_id,
                             N_SPECIAL, pre.cfg.train.seed)
        masked, tokens = valid_loss(objective, valid, lang_index, True, device)
        unmasked, _ = valid_loss(objective, valid, lang_index, False, device)
        pi = objective.log_alpha()
        with torch.no_grad():
            l0 = float(objective.expected_l0_fraction())
    finally:
        if hasattr(engine, "destroy"):  # release DeepSpeed's hooks and buffers now, not at garbage collection
            engine.destroy()

    zhat = {k: deterministic_mask(v) for k, v in pi.items()}
    pruned = {k: int((z == 0).sum()) for k, z in zhat.items()}
    n_gates = sum(v.numel() for v in pi.values())
    numel = {g.name: g.numel_per_gate for g in groups}
    total_numel = sum(numel[k] * pi[k].numel() for k in pi)
    summary = {
        **identity,
        "sparsity": sum(pruned.values()) / n_gates,
        "sparsity_params": sum(numel[k] * pruned[k] for k in pi) / total_numel,
        "kept_fraction_deterministic": sum(numel[k] * float(zhat[k].sum()) for k in pi) / total_numel,
        "expected_l0": l0,
        "valid_loss_masked": masked,
        "valid_loss_unmasked": unmasked,
        "valid_tokens": tokens,
        "n_gates": n_gates,
        "pruned_gates": pruned,
        "steps_done": cfg.steps,
        "history": history,
        "world_size": world,
        "zero_stage": zero_stage(ds),
        "precision": precision(ds),
        "fit_seconds": fit_s,
        "wall_seconds": time.time() - t0,
    }

    def write():
        from safetensors.torch import save_file

        os.makedirs(run_dir, exist_ok=True)
        tmp = os.path.join(run_dir, f".{LOG_ALPHA_FILE}.tmp")
        save_file({k: v.contiguous() for k, v in pi.items()}, tmp,
                  metadata={"lang": lang, "seed": str(seed), "groups": cfg.groups})
        os.replace(tmp, os.path.join(run_dir, LOG_ALPHA_FILE))
        atomic_write_json(os.path.join(run_dir, SUMMARY_FILE), summary)  # last: marks the run finished

    on_rank0(write, rank, world)
    log.info("l0 mask %s seed %d: sparsity %.3f, valid loss %.4f masked / %.4f unmasked, %.1fs", lang, seed,
             summary["sparsity"], masked, unmasked, summary["wall_seconds"])
    return summary


__all__ = ["GROUP_KINDS", "LOG_ALPHA_FILE", "SUMMARY_FILE", "GateGroup", "GatedObjective", "LanguageMicroBatches", "MaskConfig",
           "build_groups", "fit_gates", "mask_ds_config", "mask_run_dir", "masked_weight", "mlm_objective",
           "train_language_mask", "valid_loss"]
