"""Downstream examples: the task-independent records every loader returns and every encoder reads.

A loader returns, for one language, ``{split: [examples]}`` with splits ``train``, ``dev``, ``test`` (any may be
absent; the task layer names what is missing). Labels are strings as in the released files (``B-PER``, ``NOUN``,
``entailment``); the task maps them to ids with its label set.
"""
from __future__ import annotations

from dataclasses import dataclass

#: Split names of downstream data (pretraining's ``valid`` is ``dev`` here, as in the released datasets).
TASK_SPLITS = ("train", "dev", "test")


class TaskError(ValueError):
    """Bad downstream input: unknown task or language, a label outside the label set, a missing split, a file
    that does not parse (the message names the file, line, field or value)."""


@dataclass(frozen=True)
class TokenExample:
    """One sentence for token classification (NER, POS): a label per word.

    Attributes:
        words: the sentence's words (whitespace-free strings), length n ≥ 1.
        labels: one label per word, length n (``B-PER``/``I-PER``/``O`` for NER in IOB2, UPOS for POS).
        lang: the sentence's language id (as in the pretrained model, e.g. ``sw``).
        id: a stable identifier (file:line or dataset index), for error messages.
    """

    words: tuple[str, ...]
    labels: tuple[str, ...]
    lang: str
    id: str = ""


@dataclass(frozen=True)
class TextExample:
    """One sentence (or sentence pair, XNLI-style) for classification.

    Attributes:
        text: the sentence (premise for pairs).
        label: the class name (``entailment``, ``positive``, a genre…).
        lang: language id.
        text_pair: the second sentence (hypothesis) or None for single-sentence tasks.
        id: a stable identifier.
    """

    text: str
    label: str
    lang: str
    text_pair: str | None = None
    id: str = ""


@dataclass(frozen=True)
class QAExample:
    """One extractive-QA question over a passage (SQuAD v1.1 / TyDiQA-GoldP).

    Attributes:
        id: the question id (answers and predictions are matched by it).
        question: the question text.
        context: the passage.
        answers: gold answers as (text, character start in ``context``); at least one for train examples,
            possibly several for dev/test (the metric takes the best over them).
        lang: language id.
    """

    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]
    lang: str


@dataclass(frozen=True)
class ParallelPair:
    """A translation pair for sentence retrieval (XTREME's Tatoeba protocol): ``text`` in ``lang`` and its
    translation ``pivot_text`` in the pivot language (English)."""

    text: str
    pivot_text: str
    lang: str
    pivot: str = "en"
    id: str = ""


__all__ = ["ParallelPair", "QAExample", "TASK_SPLITS", "TaskError", "TextExample", "TokenExample"]
