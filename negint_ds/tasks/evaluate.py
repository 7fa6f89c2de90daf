"""Downstream evaluation: predictions of a fine-tuned :class:`TaskModel` and their scores, data-parallel.

Rows are sharded over ranks (row i on rank i mod W); predictions are gathered to every rank and scored once, so
scores do not depend on the world size. Metrics (:mod:`negint_ds.tasks.metrics`): NER entity F1 (seqeval), POS
accuracy, classification accuracy and macro-F1, QA F1/EM (SQuAD v1.1), retrieval accuracy@1.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from . import metrics
from .encode import IGNORE, Encoded, pad_batch


def _gather(local: list, world: int) -> list:
    if world <= 1 or not dist.is_initialized():
        return local
    parts: list = [None] * world
    dist.all_gather_object(parts, local)
    return [x for p in parts for x in p]


@torch.no_grad()
def predict(model, rows: list[Encoded], lang_index: dict[str, int], batch_size: int, device: torch.device,
            rank: int = 0, world: int = 1, phi_lang: int | None = None) -> list[tuple[int, np.ndarray]]:
    """Logits of every row, as ``(row index, logits)`` sorted by row index, on every rank.

    Args:
        model: a :class:`~negint_ds.tasks.task_model.TaskModel` (or DeepSpeed engine's module), any dtype.
        rows: encoded rows.
        lang_index: language id → index in the model.
        phi_lang: route φ of every row by this language index (zero-shot "source φ" option); None: by the
            row's language.

    Returns:
        token: (L_i, C) fp32 per row; sequence: (C,); qa: (L_i, 2).
    """
    was = model.training
    model.eval()
    mine = list(range(rank, len(rows), world))
    out = []
    for s in range(0, len(mine), batch_size):
        idx = mine[s:s + batch_size]
        b = pad_batch([rows[i] for i in idx], None)
        ids = torch.from_numpy(b["ids"]).to(device)
        pad = torch.from_numpy(b["pad"]).to(device)
        lang = torch.tensor([lang_index[rows[i].lang] for i in idx], dtype=torch.int64, device=device)
        phi = torch.full_like(lang, phi_lang) if phi_lang is not None else None
        z = model.logits(ids, pad, lang, phi).float().cpu().numpy()
        for j, i in enumerate(idx):
            out.append((i, z[j, :len(rows[i].ids)] if z.ndim == 3 else z[j]))
    model.train(was)
    return sorted(_gather(out, world), key=lambda t: t[0])


def score_tokens(examples, rows: list[Encoded], logits, labels: list[str], metric: str) -> dict:
    """Word-level predictions from first sub-piece logits, merged over a sentence's chunks, then scored.

    ``metric`` ``f1``: seqeval entity precision/recall/F1 (NER); ``accuracy``: token accuracy (POS).
    """
    pred: list[list[str]] = [[""] * len(e.words) for e in examples]
    for (i, z), r in zip(logits, rows):
        pos = np.nonzero(r.labels != IGNORE)[0]
        for w, p in zip(r.words, pos):
            pred[r.example][w] = labels[int(z[p].argmax())]
    gold = [list(e.labels) for e in examples]
    if metric == "f1":
        return metrics.entity_f1(gold, pred)
    return {"accuracy": metrics.token_accuracy(gold, pred)}


def score_sequences(examples, logits, labels: list[str]) -> dict:
    """Accuracy and macro-F1 over ``labels``."""
    pred = [labels[int(z.argmax())] for _, z in logits]
    gold = [e.label for e in examples]
    return {"accuracy": metrics.accuracy(gold, pred), "macro_f1": metrics.macro_f1(gold, pred, list(labels))}


def best_span(start: np.ndarray, end: np.ndarray, valid: np.ndarray, max_tokens: int) -> tuple[float, int, int]:
    """argmax over s ≤ e < s + max_tokens, both ``valid`` (context positions), of start[s] + end[e].

    Returns:
        (score, s, e); score −inf when no valid position exists.
    """
    score = start[:, None] + end[None, :]  # (L, L)
    L = len(start)
    i, j = np.indices((L, L))
    ok = (j >= i) & (j - i < max_tokens) & valid[:, None] & valid[None, :]
    if not ok.any():
        return float("-inf"), 0, 0
    score = np.where(ok, score, -np.inf)
    s, e = np.unravel_index(int(score.argmax()), score.shape)
    return float(score[s, e]), int(s), int(e)


def score_qa(examples, rows: list[Encoded], logits, max_answer_tokens: int) -> dict:
    """Best span per question over its windows, mapped to context characters; SQuAD v1.1 EM/F1."""
    best: dict[int, tuple[float, str]] = {}
    for (_, z), r in zip(logits, rows):
        valid = r.offsets[:, 0] >= 0
        sc, s, e = best_span(z[:, 0], z[:, 1], valid, max_answer_tokens)
        if sc == float("-inf"):
            continue
        text = examples[r.example].context[r.offsets[s, 0]:r.offsets[e, 1]].strip()
        if r.example not in best or sc > best[r.example][0]:
            best[r.example] = (sc, text)
    preds = {examples[i].id: t for i, (_, t) in best.items()}
    answers = {e.id: [a for a, _ in e.answers] for e in examples}
    return metrics.qa_scores(preds, answers)


__all__ = ["best_span", "predict", "score_qa", "score_sequences", "score_tokens"]
