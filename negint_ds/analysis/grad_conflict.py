"""Gradient conflict between languages (Wang et al. 2020, §3.1 "Gradient Conflict", §3.3, Figure 3).

For every language ℓ the probe takes g_ℓ = ∇θ L_MLM^ℓ(θ, φ_ℓ), the fp32 gradient of the masked-LM loss with
respect to the shared parameters θ only (φ excluded), over an effective batch of ``n`` windows (paper: 4,096
sentences, footnote 2, built by gradient accumulation), and reports cos(g_a, g_b) = g_a·g_b / (‖g_a‖‖g_b‖)
for every pair of languages. The control is the paper's "En–En": two independently drawn batches of the same
language, whose gradients differ only by sampling noise; a language pair below its controls conflicts more
than sampling explains (Yu et al. 2020 call a negative cosine a conflict).

Definitions that make the numbers reproducible:

* **The gradient of an effective batch** is the gradient of the mean loss over *all* predicted tokens of its
  micro-batches: g = Σ_m ∇(Σ_{p∈m} ℓ_p) / Σ_m P_m. It equals the gradient of one big batch holding the same
  masked windows, whatever the micro-batch size or number of processes (tested).
* **Data parallelism**: global micro-batch m runs on rank m mod W; token-loss gradient sums and token counts
  are summed over ranks (one all-reduce per gradient), so every rank gets the same g, and 2 processes give the
  cosines of 1 up to summation order (tested).
* **fp32**: θ comes from DeepSpeed's fp32 master weights when training in 16 bits
  (:func:`negint_ds.meta.precision.fp32_theta`, ZeRO 0–2; ZeRO-3 is refused) and φ from its fp32 masters; the
  forwards run through ``torch.func.functional_call`` with fresh fp32 leaves, so the module's parameters, their
  ``.grad`` and DeepSpeed's state are never touched.
* **No effect on training**: the probe's windows and masks come from their own counter-based seeds
  ((seed, "grad_conflict", step, language, draw) and (…, micro-batch)), it runs without dropout by default (the
  gradient of the loss itself, not of one dropout draw) inside ``torch.random.fork_rng``, and it leaves no
  gradients behind: a run with the probe on trains a bit-identical model (tested).

Groups: ``all`` (every θ parameter), ``embeddings`` (token, position and language embeddings, their LayerNorm
and the output bias), and per layer ``layer{l}.attn``, ``layer{l}.ffn``, ``layer{l}.norm`` (its LayerNorms) and
``layer{l}.adapter`` (shared adapters, which are θ).
"""
from __future__ import annotations

import contextlib
import csv
import logging
import os
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..config import GradConflictConfig, MLMConfig
from ..data.binarized import TokenStream
from ..meta.passes import eager, mlm_loss
from ..mlm import MLMBatch, mask_tokens
from ..seeding import derive_seed
from ..train.dist import all_reduce_
from .tables import csv_text, write_csv

log = logging.getLogger("negint_ds")

#: Columns of ``analysis/grad_conflict.csv`` (one row per probe step × pair × group).
COLUMNS = ("step", "epoch", "pair", "kind", "group", "cosine", "sequences")
_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(attn|ffn|ln_attn|ln_ffn|adapter_attn|adapter_ffn)\.")


def parameter_group(name: str) -> str:
    """The analysis group of θ parameter ``name`` (see the module docstring), e.g. ``layer3.ffn``.

    Raises:
        ValueError: a parameter name the model does not define (a model change that needs a group here).
    """
    m = _LAYER.match(name)
    if m:
        part = m.group(2)
        kind = {"ln_attn": "norm", "ln_ffn": "norm", "adapter_attn": "adapter", "adapter_ffn": "adapter"}.get(part, part)
        return f"layer{m.group(1)}.{kind}"
    if name.startswith(("encoder.tok_emb.", "encoder.pos_emb.", "encoder.lang_emb.", "encoder.ln_emb.")) \
            or name == "out_bias":
        return "embeddings"
    raise ValueError(f"parameter {name!r} has no gradient-conflict group")


@dataclass(frozen=True)
class Draw:
    """One gradient of a probe: language index ``lang``, independent draw ``draw`` (0 for the pairs, 1 for the
    control's second batch)."""

    lang: int
    draw: int


class ProbeBatches:
    """The probe's masked windows: drawn from the train streams with the probe's own seeds.

    Window starts are uniform over each stream (any offset, so every token can start a window), drawn with
    numpy's generator seeded by (seed, "grad_conflict", step, language, draw); micro-batch m is masked with
    (…, m). Nothing depends on the world size or on the training batches.

    Args:
        streams: train token streams in language-index order.
        seq_len: tokens per window (the run's ``train.seq_len``).
        micro_batch: windows per micro-batch.
    """

    def __init__(self, streams: list[TokenStream], seq_len: int, micro_batch: int, mlm: MLMConfig, vocab_size: int,
                 mask_id: int, n_special: int, seed: int):
        for s in streams:
            if s.num_tokens < seq_len:
                raise ValueError(f"{s.path}: {s.num_tokens} tokens, fewer than one window of {seq_len}")
        self.streams, self.seq_len, self.micro = streams, seq_len, micro_batch
        self.mlm, self.vocab_size, self.mask_id, self.n_special, self.seed = mlm, vocab_size, mask_id, n_special, seed

    def micro_batches(self, step: int, d: Draw, sequences: int, rank: int, world: int) -> list[MLMBatch]:
        """This rank's micro-batches of draw ``d`` at ``step``: global micro-batches m ≡ rank (mod world).

        Returns:
            MLMBatches on CPU, each (micro_batch, seq_len) int64 input ids, rows of language ``d.lang``.

        Raises:
            ValueError: ``sequences`` is not a multiple of the micro-batch.
        """
        if sequences % self.micro:
            raise ValueError(f"analysis.grad_conflict.sequences={sequences} is not a multiple of its micro-batch "
                             f"{self.micro}")
        stream = self.streams[d.lang]
        rng = np.random.default_rng(derive_seed(self.seed, "grad_conflict", step, d.lang, d.draw))
        starts = rng.integers(0, stream.num_tokens - self.seq_len + 1, size=sequences)
        ar = np.arange(self.seq_len)
        out = []
        for m in range(rank, sequences // self.micro, world):
            idx = starts[m * self.micro:(m + 1) * self.micro, None] + ar  # (micro, seq_len)
            tokens = torch.from_numpy(np.asarray(stream.tokens[idx], dtype=np.int64))
            g = torch.Generator().manual_seed(derive_seed(self.seed, "grad_conflict_mask", step, d.lang, d.draw, m))
            ids, pos, tgt = mask_tokens(tokens, self.mlm, self.vocab_size, self.mask_id, self.n_special, g)
            out.append(MLMBatch(ids, torch.full((self.micro,), d.lang, dtype=torch.int64), pos, tgt))
        return out


def theta_gradient(model: nn.Module, theta: dict[str, torch.Tensor], fixed: dict[str, torch.Tensor],
                   batches: list[MLMBatch], lang: int, device: torch.device,
                   world: int = 1) -> tuple[list[torch.Tensor], int]:
    """g = ∇θ (Σ token losses) / (Σ predicted tokens) over ``batches`` of every rank (the effective batch).

    Args:
        model: a :class:`~negint_ds.model.MaskedLM`; never modified (its parameters are replaced through
            ``torch.func.functional_call`` by ``theta`` and ``fixed``).
        theta: θ parameter name → fp32 (or fp64) value; the gradient is taken with respect to these.
        fixed: other parameters to substitute (φ's fp32 masters for a 16-bit module), or empty.
        batches: this rank's micro-batches, all of language ``lang``.
        world: processes; with ``torch.distributed`` initialised and world > 1 the sums are all-reduced.

    Returns:
        (gradients in ``theta``'s order, each of its parameter's shape and dtype; total predicted tokens).
    """
    names = list(theta)
    leaves = [t.detach().requires_grad_(True) for t in theta.values()]
    total = [torch.zeros_like(t) for t in leaves]
    n_tokens = 0
    for mb in batches:
        params = dict(fixed)
        params.update(zip(names, leaves))
        loss = mlm_loss(model, params, mb.to(device), lang, reduction="sum")
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        for acc, g in zip(total, grads):
            if g is not None:
                acc += g
        n_tokens += int(mb.targets.numel())
    count = torch.tensor([float(n_tokens)], dtype=torch.float64, device=device)
    if world > 1 and dist.is_initialized():
        all_reduce_(total, world, mean=False)
        dist.all_reduce(count)
    n = int(count.item())
    for acc in total:
        acc /= max(n, 1)
    return total, n


def group_cosines(grads: dict[Draw, list[torch.Tensor]], names: list[str],
                  pairs: list[tuple[str, str, Draw, Draw]]) -> list[dict]:
    """Cosine similarity of every pair, whole-θ (``all``) and per :func:`parameter_group`.

    Args:
        grads: per draw, gradients in ``names`` order.
        pairs: (label, kind, draw a, draw b).

    Returns:
        Rows ``{"pair", "kind", "group", "cosine"}``; a cosine is NaN when a gradient of the group is zero.
    """
    draws = list(grads)
    index = {d: i for i, d in enumerate(draws)}
    gram: dict[str, torch.Tensor] = {}
    for k, name in enumerate(names):
        x = torch.stack([grads[d][k].reshape(-1).double() for d in draws])  # (D, numel)
        g = x @ x.T  # (D, D) dot products in fp64
        group = parameter_group(name)
        gram[group] = gram.get(group, 0) + g
        gram["all"] = gram.get("all", 0) + g
    rows = []
    order = ["all", "embeddings"] + sorted((g for g in gram if g.startswith("layer")),
                                           key=lambda g: (int(g[5:].split(".")[0]), g))
    for group in [g for g in order if g in gram]:
        G = gram[group]
        for label, kind, a, b in pairs:
            i, j = index[a], index[b]
            denom = float(torch.sqrt(G[i, i] * G[j, j]))
            rows.append({"pair": label, "kind": kind, "group": group,
                         "cosine": float(G[i, j]) / denom if denom > 0 else float("nan")})
    return rows


def probe_pairs(lang_ids: list[str], controls: list[str] | None) -> tuple[list[Draw], list[tuple[str, str, Draw, Draw]]]:
    """The draws and pairs of one probe: every language pair (draw 0 of each, labels in config order, e.g.
    ``sw-en``) and each control language's two independent draws (``en-en``)."""
    ctrl = list(lang_ids) if controls is None else list(controls)
    draws = [Draw(i, 0) for i in range(len(lang_ids))] + [Draw(lang_ids.index(c), 1) for c in ctrl]
    pairs = [(f"{lang_ids[i]}-{lang_ids[j]}", "pair", Draw(i, 0), Draw(j, 0))
             for i in range(len(lang_ids)) for j in range(i + 1, len(lang_ids))]
    pairs += [(f"{c}-{c}", "control", Draw(lang_ids.index(c), 0), Draw(lang_ids.index(c), 1)) for c in ctrl]
    return draws, pairs


@contextlib.contextmanager
def probe_mode(model: nn.Module, dropout: bool, seed: int, device: torch.device):
    """Eval mode (unless ``dropout``) and a forked RNG for the block; train/eval mode and every RNG state restored.

    With ``dropout`` the probe's dropout masks are seeded from ``seed``, never from training's RNG stream.
    """
    was_training = model.training
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), eager(model):  # fp32 leaves swapped in: run the module eagerly
        model.train(dropout)
        if dropout:
            torch.manual_seed(seed)
        try:
            yield
        finally:
            model.train(was_training)


def probe(model: nn.Module, theta: dict[str, torch.Tensor], fixed: dict[str, torch.Tensor], batches: ProbeBatches,
          step: int, lang_ids: list[str], cfg: GradConflictConfig, device: torch.device, rank: int = 0,
          world: int = 1) -> list[dict]:
    """One probe at ``step``: every draw's θ gradient, then the cosines of :func:`probe_pairs`.

    A collective when ``world > 1`` (every rank must call it at the same step).

    Returns:
        Rows ``{"step", "pair", "kind", "group", "cosine", "sequences"}``, identical on every rank.
    """
    draws, pairs = probe_pairs(lang_ids, cfg.controls)
    grads = {}
    with probe_mode(model, cfg.dropout, derive_seed(batches.seed, "grad_conflict_dropout", step), device):
        for d in draws:
            grads[d], _ = theta_gradient(model, theta, fixed, batches.micro_batches(step, d, cfg.sequences, rank, world),
                                         d.lang, device, world)
    rows = group_cosines(grads, list(theta), pairs)
    return [{"step": step, **r, "sequences": cfg.sequences} for r in rows]


# ---------------------------------------------------------------------------------------------- files and figure
def read_rows(path: str) -> list[dict]:
    """Rows of a gradient-conflict CSV (numbers parsed), or [] when it does not exist."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{**r, "step": int(r["step"]), "epoch": float(r["epoch"]), "cosine": float(r["cosine"]),
                 "sequences": int(r["sequences"])} for r in csv.DictReader(f)]


def write_rows(path: str, rows: list[dict], append: bool = True) -> None:
    """Append ``rows`` to the CSV (header when new), synced to disk; ``append=False`` rewrites it atomically."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not append:
        write_csv(rows, COLUMNS, path)
        return
    new = not os.path.isfile(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="", encoding="utf-8") as f:
        f.write(csv_text(rows, COLUMNS, header=new))
        f.flush()
        os.fsync(f.fileno())


def plot(rows: list[dict], png: str, title: str = "", x: str = "step") -> bool:
    """Fig. 3: whole-θ cosine vs ``x`` (step or epoch), one line per language pair (solid) and per control
    (dashed), plus ``<png stem>_groups.png``: each group's cosine averaged over probes, one line per pair.

    Returns:
        False when matplotlib is missing or there is nothing to plot.
    """
    whole = [r for r in rows if r["group"] == "all"]
    if not whole:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed; no %s", png)
        return False
    labels = list(dict.fromkeys(r["pair"] for r in whole))
    fig, ax = plt.subplots(figsize=(9, 4))
    for label in labels:
        pts = sorted((r[x], r["cosine"]) for r in whole if r["pair"] == label)
        kind = next(r["kind"] for r in whole if r["pair"] == label)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "--" if kind == "control" else "-", marker=".",
                label=f"{label} (control)" if kind == "control" else label)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel(x)
    ax.set_ylabel("cosine similarity of θ gradients")
    ax.set_title(title or "Gradient similarity during pretraining (cf. Fig. 3)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)

    groups = list(dict.fromkeys(r["group"] for r in rows if r["group"] != "all"))
    fig, ax = plt.subplots(figsize=(max(9, 0.5 * len(groups) + 3), 4))
    for label in labels:
        means = [np.nanmean([r["cosine"] for r in rows if r["pair"] == label and r["group"] == g]) for g in groups]
        kind = next(r["kind"] for r in whole if r["pair"] == label)
        ax.plot(range(len(groups)), means, "--" if kind == "control" else "-", marker="o", label=label)
    ax.set_xticks(range(len(groups)), groups, rotation=60, ha="right", fontsize=8)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_ylabel("mean cosine over probes")
    ax.set_title("Gradient similarity per parameter group")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(os.path.splitext(png)[0] + "_groups.png", dpi=120)
    plt.close(fig)
    return True


def combine_runs(run_dirs: list[str], offline: bool = False) -> list[dict]:
    """The probe rows of several runs in one table, each pair labelled with its run (e.g. ``ar-en (ar-en model)``
    beside ``fr-en (fr-en model)``, Fig. 3's layout), from ``analysis/grad_conflict.csv`` (or the offline CSV).

    Raises:
        FileNotFoundError: a run has no such CSV (the message names it and how to make it).
    """
    name = "grad_conflict_offline.csv" if offline else "grad_conflict.csv"
    out = []
    for run in run_dirs:
        path = os.path.join(run, "analysis", name)
        rows = read_rows(path)
        if not rows:
            how = "launchers/analyze.py grad_conflict" if offline else "a run with analysis.grad_conflict.enabled"
            raise FileNotFoundError(f"{path}: no gradient-conflict rows ({how} writes them)")
        tag = os.path.basename(os.path.abspath(run))
        out += [{**r, "pair": f"{r['pair']} ({tag})", "run": tag} for r in rows]
    return out


__all__ = ["COLUMNS", "combine_runs", "Draw", "ProbeBatches", "group_cosines", "parameter_group", "plot", "probe", "probe_mode",
           "probe_pairs", "read_rows", "theta_gradient", "write_rows"]
