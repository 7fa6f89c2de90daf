"""Per-language validation perplexity (the paper's Figure 2): exp of mean MLM cross-entropy on masked tokens,
with the number of masked tokens and a 95% bootstrap interval over windows (:mod:`.ppl_interval`)."""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.distributed as dist

from ..mlm import MLMBatch
from .ppl_interval import ppl_summary, window_sums

log = logging.getLogger("negint_ds")


def token_losses(model, batch: MLMBatch, lang: int | None = None) -> torch.Tensor:
    """Cross-entropy at each predicted position: the terms whose mean :meth:`MaskedLM.forward` returns.

    Goes through the model's (or DeepSpeed engine's) own forward with ``reduction="none"``, so ZeRO-3
    gathers and a compiled module behave as in training; under ZeRO-3 it is a collective: every rank must
    call this for the same number of batches.

    Args:
        model: a DeepSpeed engine or a :class:`~negint_ds.model.MaskedLM`, in eval mode.
        batch: on the model's device.
        lang: the language of every row (a Python int), or None to route rows by ``batch.lang_ids``.

    Returns:
        (P,) float32 (float64 for a float64 model) losses in nats, in ``batch.pred_positions`` order.
    """
    return model(batch.input_ids, batch.lang_ids, batch.pred_positions, batch.targets, lang=lang, reduction="none")


@torch.no_grad()
def evaluate(engine, batches_by_lang: dict[str, list[tuple[MLMBatch, bool]]]) -> dict[str, dict]:
    """Score every language's fixed validation batches with the model in eval mode (no dropout).

    A collective: every rank must call it with the same number of batches per language. Each rank scores
    its windows; the per-window (loss sum, token count) pairs of all ranks are then gathered to every rank,
    which computes the same statistics from them (:func:`~negint_ds.train.ppl_interval.ppl_summary`).

    Args:
        engine: DeepSpeed engine (its ``module`` is scored) or a :class:`~negint_ds.model.MaskedLM`.
        batches_by_lang: from :func:`~negint_ds.data.batches.eval_batches`, in language-index order (every
            batch holds one language, so language-specific modules run on it whole); entries with
            ``counts=False`` pad ranks with fewer windows: they run (ZeRO-3 gathers need every rank) but
            are not scored.

    Returns:
        ``{lang: {"loss": mean nats per predicted token, "ppl": exp(loss), "ppl_lo"/"ppl_hi": 95% bootstrap
        interval of ppl over windows (None with fewer than two windows), "tokens": predicted (masked)
        tokens, "windows": scored windows}}``, over all ranks' windows and identical on every rank.
    """
    model = getattr(engine, "module", engine)
    device = getattr(engine, "device", None) or next(model.parameters()).device
    local: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    engine.eval()
    try:
        for index, (lang, batches) in enumerate(batches_by_lang.items()):
            sums, counts = [], []
            for b, scored in batches:
                mb = b.to(device)
                losses = token_losses(engine, mb, lang=index)
                if scored:
                    s, c = window_sums(losses, mb.pred_positions, *mb.input_ids.shape)
                    sums.append(s)
                    counts.append(c)
            local[lang] = (torch.cat(sums).cpu().numpy() if sums else np.zeros(0),
                           torch.cat(counts).cpu().numpy() if counts else np.zeros(0, dtype=np.int64))
    finally:
        engine.train()
    windows = _gather_windows(local)
    return {lang: ppl_summary(*windows[lang]) for lang in batches_by_lang}


def _gather_windows(local: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every rank's per-window (loss sums, counts), concatenated, on every rank (one collective in all)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return local
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return {lang: (np.concatenate([p[lang][0] for p in parts]), np.concatenate([p[lang][1] for p in parts]))
            for lang in local}


def check_eval_sizes(results: dict[str, dict], min_tokens: int, warn: bool = True) -> list[str]:
    """Flag (and optionally warn about) languages whose validation set has too few masked tokens.

    Sets ``results[lang]["too_few_tokens"]`` (bool) on every language, so the final table can mark them.

    Args:
        results: from :func:`evaluate`.
        min_tokens: ``train.min_eval_tokens``.
        warn: log one warning per small language on the ``negint_ds`` logger (the trainer does so once per
            run, at its first evaluation: the validation set does not change).

    Returns:
        The languages with fewer than ``min_tokens`` masked tokens.
    """
    small = []
    for lang, r in results.items():
        r["too_few_tokens"] = r["tokens"] < min_tokens
        if not r["too_few_tokens"]:
            continue
        small.append(lang)
        if warn:
            lo, hi = r.get("ppl_lo"), r.get("ppl_hi")
            interval = f"95% interval {lo:.4g}–{hi:.4g}" if lo is not None else "no interval: fewer than 2 windows"
            log.warning("%s: validation perplexity rests on only %d masked tokens in %d windows (%s), fewer than "
                        "train.min_eval_tokens=%d; its perplexity is too noisy to compare. Score more windows "
                        "(train.eval_sequences, or a larger data.split.valid_fraction)", lang, r["tokens"],
                        r.get("windows", 0), interval, min_tokens)
    return small


def format_ppl(r: dict) -> str:
    """One language's result for a log line, e.g. ``12.34 [11.90–12.81] 770 tok``."""
    interval = f" [{r['ppl_lo']:.2f}–{r['ppl_hi']:.2f}]" if r.get("ppl_lo") is not None else ""
    return f"{r['ppl']:.2f}{interval} {r.get('tokens', '?')} tok"
