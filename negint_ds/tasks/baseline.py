"""The majority-class floor of a fine-tuning grid: the test score of a constant predictor of the training split's
most frequent label.

A fine-tuned score at this floor means the classifier learned the label prior and nothing from the encoder (too
few epochs, too small a learning rate, or an encoder with nothing to offer): comparing two models by such scores
compares two collapsed heads, not their representations. The grid stores the floor beside each selected row
(``majority_<metric>`` in ``results.json``) and the experiment findings refuse to judge a claim on a side at it.
QA and retrieval have no label prior and get none.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

from . import metrics
from .registry import TaskSpec


def majority_label(spec: TaskSpec, train: Sequence, labels: Sequence[str]) -> str:
    """The most frequent gold label of ``train``; ties go to the label earliest in ``labels``.

    Args:
        spec: the task (``kind`` ``sequence``: one ``example.label`` each; ``token``: ``example.labels`` per word).
        train: the training examples the grid fine-tunes on (after its cap).
        labels: the grid's label set, for a deterministic tie break.

    Raises:
        ValueError: ``spec.kind`` is neither ``sequence`` nor ``token``, or ``train`` has no label.
    """
    if spec.kind == "sequence":
        counts = Counter(e.label for e in train)
    elif spec.kind == "token":
        counts = Counter(lab for e in train for lab in e.labels)
    else:
        raise ValueError(f"task {spec.name} ({spec.kind}) has no label prior")
    if not counts:
        raise ValueError(f"task {spec.name}: the training split has no labels")
    order = {lab: i for i, lab in enumerate(labels)}
    return max(counts, key=lambda lab: (counts[lab], -order.get(lab, len(order))))


def majority_scores(spec: TaskSpec, train: Sequence, test: Sequence, labels: Sequence[str]) -> dict[str, float] | None:
    """The test scores of always predicting :func:`majority_label` of ``train``, in the grid's own metrics.

    Returns:
        ``sequence``: ``{"accuracy", "macro_f1"}`` (fractions, as :func:`~.evaluate.score_sequences`); ``token``:
        ``{"accuracy"}`` for POS or ``{"precision", "recall", "f1"}`` for NER (an all-``O`` tagging scores 0);
        None for QA and retrieval.
    """
    if spec.kind not in ("sequence", "token"):
        return None
    top = majority_label(spec, train, labels)
    if spec.kind == "sequence":
        gold = [e.label for e in test]
        pred = [top] * len(gold)
        return {"accuracy": metrics.accuracy(gold, pred), "macro_f1": metrics.macro_f1(gold, pred, list(labels))}
    gold_t = [list(e.labels) for e in test]
    pred_t = [[top] * len(g) for g in gold_t]
    if spec.metric == "f1":
        return {k: float(v) for k, v in metrics.entity_f1(gold_t, pred_t).items()}
    return {"accuracy": metrics.token_accuracy(gold_t, pred_t)}


__all__ = ["majority_label", "majority_scores"]
