"""Downstream evaluation metrics: NER entity F1, POS token accuracy, classification accuracy / macro F1,
SQuAD v1.1 exact match and F1 (TyDiQA-GoldP), and Tatoeba-style sentence retrieval accuracy.

Every score is a **fraction in [0, 1]** (not a percentage); multiply by 100 to compare with tables that
report percent (XTREME, Wang et al. 2020). Inputs whose lengths disagree raise :class:`TaskError` naming the
offending index, because a silently truncated comparison would report a plausible but wrong score.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

import torch

from negint_ds.tasks.examples import TaskError


def _check_sentences(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> None:
    """Raise TaskError unless ``gold`` and ``pred`` have the same sentence count and per-sentence lengths."""
    if len(gold) != len(pred):
        raise TaskError(f"gold has {len(gold)} sentences, pred has {len(pred)}")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise TaskError(f"sentence {i}: gold has {len(g)} tokens, pred has {len(p)}")


def entity_f1(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 for NER, micro-averaged over entity types.

    Uses ``seqeval.metrics`` in its default (conlleval-compatible) mode, as XTREME does (Hu et al. 2020):
    an ``I-X`` after ``O`` or after another type starts an entity, a type change ends one, and an entity counts
    as correct only if its type, start and end all match a gold entity (a partial overlap is a miss). Entities
    never cross sentence boundaries.

    Args:
        gold: gold IOB labels, one list per sentence (``[["B-PER", "O"], ...]``).
        pred: predicted labels, same shape as ``gold``.

    Returns:
        ``{"precision": p, "recall": r, "f1": f}``, fractions in [0, 1]; 0 where undefined (no predicted or
        no gold entities).

    Raises:
        TaskError: the sentence counts differ, or sentence ``i`` has different token counts (named by index).
    """
    from seqeval.metrics import f1_score, precision_score, recall_score

    _check_sentences(gold, pred)
    # seqeval only recognises nested *lists* (a list of tuples is read as one flat sequence and crashes).
    g = [list(s) for s in gold]
    p = [list(s) for s in pred]
    return {
        "precision": float(precision_score(g, p, zero_division=0)),
        "recall": float(recall_score(g, p, zero_division=0)),
        "f1": float(f1_score(g, p, zero_division=0)),
    }


def token_accuracy(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> float:
    """Fraction of tokens whose predicted label equals the gold label, over all tokens of all sentences.

    For POS tagging this is UPOS accuracy, which equals micro-averaged F1 (XTREME reports it as "F1").

    Args:
        gold: gold labels, one list per sentence.
        pred: predicted labels, same shape as ``gold``.

    Returns:
        Accuracy as a fraction in [0, 1].

    Raises:
        TaskError: sentence or token counts differ (named by sentence index), or there are no tokens at all.
    """
    _check_sentences(gold, pred)
    total = sum(len(s) for s in gold)
    if total == 0:
        raise TaskError("token_accuracy: no tokens to score")
    correct = sum(g == p for gs, ps in zip(gold, pred) for g, p in zip(gs, ps))
    return correct / total


def accuracy(gold: Sequence[str], pred: Sequence[str]) -> float:
    """Fraction of examples whose predicted label equals the gold label (XNLI accuracy).

    Args:
        gold: gold labels, length N ≥ 1.
        pred: predicted labels, length N.

    Returns:
        Accuracy as a fraction in [0, 1].

    Raises:
        TaskError: lengths differ or N = 0.
    """
    if len(gold) != len(pred):
        raise TaskError(f"gold has {len(gold)} labels, pred has {len(pred)}")
    if not gold:
        raise TaskError("accuracy: no examples to score")
    return sum(g == p for g, p in zip(gold, pred)) / len(gold)


def macro_f1(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean of per-class F1 over the given label set (``sklearn.metrics.f1_score``, macro).

    Every label in ``labels`` counts in the mean, including one that occurs in neither ``gold`` nor ``pred``
    (its F1 is 0, ``zero_division=0``), so scores are comparable across languages whose test sets lack a
    class. Values outside ``labels`` are not classes of the mean, but still count as false positives /
    negatives of the listed class they were confused with (scikit-learn semantics).

    Args:
        gold: gold labels, length N ≥ 1.
        pred: predicted labels, length N.
        labels: the label set, non-empty, without duplicates.

    Returns:
        Macro F1 as a fraction in [0, 1].

    Raises:
        TaskError: lengths differ, N = 0, or ``labels`` is empty or has duplicates.
    """
    from sklearn.metrics import f1_score

    if len(gold) != len(pred):
        raise TaskError(f"gold has {len(gold)} labels, pred has {len(pred)}")
    if not gold:
        raise TaskError("macro_f1: no examples to score")
    if not labels or len(set(labels)) != len(labels):
        raise TaskError(f"macro_f1: labels must be non-empty and unique, got {list(labels)}")
    return float(f1_score(list(gold), list(pred), labels=list(labels), average="macro", zero_division=0))


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Normalise an answer string as the official SQuAD v1.1 script does (Rajpurkar et al. 2016,
    ``evaluate-v1.1.py``; XTREME uses it for TyDiQA-GoldP).

    Steps, in the script's order: lower-case; drop ASCII punctuation (``string.punctuation``); remove the
    whole words ``a``, ``an``, ``the`` (``theory`` keeps its ``the``); collapse whitespace runs to one space
    and strip the ends. Non-English punctuation and articles are deliberately left alone, as in the script.

    Args:
        s: an answer text.

    Returns:
        The normalised string.

    Raises:
        Nothing.
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def qa_exact_match(pred: str, gold: str) -> float:
    """1.0 if the normalised prediction equals the normalised gold answer, else 0.0 (SQuAD v1.1 EM).

    Args:
        pred: predicted answer text.
        gold: one gold answer text.

    Returns:
        1.0 or 0.0.

    Raises:
        Nothing.
    """
    return float(normalize_answer(pred) == normalize_answer(gold))


def qa_f1(pred: str, gold: str) -> float:
    """Token-overlap F1 between normalised prediction and gold (SQuAD v1.1 F1).

    Tokens are the whitespace-split normalised strings; overlap is the multiset intersection. With no common
    token (including when either side normalises to empty) the score is 0, as in the official script.

    Args:
        pred: predicted answer text.
        gold: one gold answer text.

    Returns:
        F1 as a fraction in [0, 1].

    Raises:
        Nothing.
    """
    pred_tokens = normalize_answer(pred).split()
    gold_tokens = normalize_answer(gold).split()
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_scores(predictions: Mapping[str, str], answers: Mapping[str, Sequence[str]]) -> dict[str, float | int]:
    """Exact match and F1 over a QA evaluation set, with SQuAD v1.1 semantics.

    Each question scores the maximum over its gold answers; the set score is the mean over **all** questions
    in ``answers``. A question without a prediction scores 0 and still counts in the denominator (the
    official script does the same, printing "Unanswered question ... will receive score 0").

    Args:
        predictions: question id → predicted answer text.
        answers: question id → gold answer texts (at least one per question).

    Returns:
        ``{"exact_match": em, "f1": f1, "n": number of questions, "unanswered": count}``; ``exact_match``
        and ``f1`` are fractions in [0, 1].

    Raises:
        TaskError: ``answers`` is empty, a question has no gold answer, or a prediction id is not a question
            of ``answers`` (that is a mismatched prediction file, which the official script would ignore).
    """
    if not answers:
        raise TaskError("qa_scores: no questions to score")
    unknown = [qid for qid in predictions if qid not in answers]
    if unknown:
        raise TaskError(f"qa_scores: {len(unknown)} prediction id(s) not in the gold answers, e.g. {unknown[0]!r}")
    em_total = f1_total = 0.0
    unanswered = 0
    for qid, golds in answers.items():
        if not golds:
            raise TaskError(f"qa_scores: question {qid!r} has no gold answer")
        if qid not in predictions:
            unanswered += 1
            continue
        pred = predictions[qid]
        em_total += max(qa_exact_match(pred, g) for g in golds)
        f1_total += max(qa_f1(pred, g) for g in golds)
    n = len(answers)
    return {"exact_match": em_total / n, "f1": f1_total / n, "n": n, "unanswered": unanswered}


def retrieval_accuracy(src: torch.Tensor, tgt: torch.Tensor) -> dict[str, float | int]:
    """Nearest-neighbour translation retrieval accuracy@1 under cosine similarity (XTREME's Tatoeba protocol,
    Hu et al. 2020; Artetxe & Schwenk 2019).

    Row i of ``src`` and row i of ``tgt`` embed a sentence and its translation. For each source row the
    retrieved target is the argmax of cosine similarity over all target rows, and vice versa; a retrieval is
    correct when it returns index i. Ties go to the lowest index (``torch.argmax`` returns the first maximum).
    Similarities are computed in float64 so that equal embeddings give exactly equal scores. An all-zero row
    has similarity 0 to everything.

    Args:
        src: (N, d) float tensor, source-language sentence embeddings.
        tgt: (N, d) float tensor, their translations' embeddings, same shape.

    Returns:
        ``{"src_to_tgt": acc, "tgt_to_src": acc, "n": N}``; accuracies are fractions in [0, 1].

    Raises:
        TaskError: a tensor is not 2-D, the shapes differ, N = 0 or d = 0, or an embedding is not finite.
    """
    if src.dim() != 2 or tgt.dim() != 2:
        raise TaskError(f"retrieval_accuracy: expected (N, d) tensors, got {tuple(src.shape)} and {tuple(tgt.shape)}")
    if src.shape != tgt.shape:
        raise TaskError(f"retrieval_accuracy: src shape {tuple(src.shape)} != tgt shape {tuple(tgt.shape)}")
    n, d = src.shape
    if n == 0 or d == 0:
        raise TaskError(f"retrieval_accuracy: empty embeddings, shape {tuple(src.shape)}")
    s = src.detach().to(dtype=torch.float64, device="cpu")
    t = tgt.detach().to(dtype=torch.float64, device="cpu")
    if not (torch.isfinite(s).all() and torch.isfinite(t).all()):
        raise TaskError("retrieval_accuracy: embeddings contain NaN or inf")
    sim = torch.nn.functional.normalize(s, dim=1) @ torch.nn.functional.normalize(t, dim=1).T
    gold = torch.arange(n)
    return {
        "src_to_tgt": (sim.argmax(dim=1) == gold).double().mean().item(),
        "tgt_to_src": (sim.argmax(dim=0) == gold).double().mean().item(),
        "n": n,
    }


__all__ = [
    "accuracy",
    "entity_f1",
    "macro_f1",
    "normalize_answer",
    "qa_exact_match",
    "qa_f1",
    "qa_scores",
    "retrieval_accuracy",
    "token_accuracy",
]
