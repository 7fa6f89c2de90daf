"""From downstream examples to model inputs with the pretrained run's SentencePiece vocabulary.

Input format follows pretraining: token streams separate sentences with ``</s>`` (EOS), so a fine-tuning input is
``</s> A </s>`` and a pair is ``</s> A </s> B </s>`` (XLM's convention: ``</s>`` doubles as the sequence start).

* Token classification (NER, POS; paper §3.2): each word is encoded on its own, its label sits on its first
  sub-piece and the other pieces get :data:`IGNORE` ("predict the label for each word based on its first
  subword"). A sentence longer than ``max_len`` is cut into consecutive word chunks, so every word is scored.
* Sequence (pair) classification: truncated to ``max_len``, the longer text first.
* Extractive QA (TyDiQA-GoldP, SQuAD v1.1): ``</s> question </s> context-window </s>``; the context is cut into
  windows of at most ``max_len`` tokens that start every ``doc_stride`` context tokens (BERT's SQuAD recipe).
  Each piece keeps its character span in the context (SentencePiece offsets), so a predicted token span maps back
  to the exact context substring. A window without the answer is labelled (0, 0): "no answer here".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.vocab import EOS_ID, PAD_ID, Vocabulary
from .examples import QAExample, TaskError, TextExample, TokenExample

#: Label id of positions that carry no label (non-first sub-pieces, separators, padding).
IGNORE = -100


@dataclass
class Encoded:
    """One model input row.

    Attributes:
        ids: (L,) int64 token ids, L ≤ max_len.
        lang: language id of the example (str).
        labels: token tasks: (L,) int64 label ids with :data:`IGNORE`; sequence tasks: a 0-d label id; QA:
            (2,) start/end token index.
        example: index of the source example in the list that was encoded.
        words: token tasks: the word indices (into the example) of the labelled positions, in order.
        offsets: QA: (L, 2) character span in the context of each position, (-1, -1) outside the context.
    """

    ids: np.ndarray
    lang: str
    labels: np.ndarray
    example: int
    words: np.ndarray | None = None
    offsets: np.ndarray | None = None


def _pieces(vocab: Vocabulary, texts: list[str]) -> list[list[int]]:
    return vocab.encode(texts)


def encode_tokens(examples: list[TokenExample], vocab: Vocabulary, label_ids: dict[str, int],
                  max_len: int) -> list[Encoded]:
    """Token-classification rows, first sub-piece labelled; long sentences split into word chunks.

    Raises:
        TaskError: a label is not in ``label_ids`` (names the example and label); ``max_len`` < 3.
    """
    if max_len < 3:
        raise TaskError(f"max_len={max_len} leaves no room for a word between the separators")
    out: list[Encoded] = []
    room = max_len - 2
    for i, ex in enumerate(examples):
        for lab in ex.labels:
            if lab not in label_ids:
                raise TaskError(f"example {ex.id or i} ({ex.lang}): label {lab!r} is not in the task's label set "
                                f"{sorted(label_ids)}")
        pieces = _pieces(vocab, list(ex.words))
        ids: list[int] = []
        labels: list[int] = []
        words: list[int] = []
        for w, (p, lab) in enumerate(zip(pieces, ex.labels)):
            p = p[:room] or [vocab.sp.unk_id()]  # an empty encoding (e.g. a lone control char) still gets a slot
            if len(ids) + len(p) > room:
                out.append(_token_row(ids, labels, words, ex.lang, i))
                ids, labels, words = [], [], []
            ids += p
            labels += [label_ids[lab]] + [IGNORE] * (len(p) - 1)
            words.append(w)
        if ids:
            out.append(_token_row(ids, labels, words, ex.lang, i))
    return out


def _token_row(ids: list[int], labels: list[int], words: list[int], lang: str, i: int) -> Encoded:
    return Encoded(np.array([EOS_ID, *ids, EOS_ID], dtype=np.int64), lang,
                   np.array([IGNORE, *labels, IGNORE], dtype=np.int64), i, words=np.array(words, dtype=np.int64))


def encode_texts(examples: list[TextExample], vocab: Vocabulary, label_ids: dict[str, int],
                 max_len: int) -> list[Encoded]:
    """Sequence (pair) classification rows ``</s> A </s> [B </s>]``, truncating the longer text first.

    Raises:
        TaskError: a label is not in ``label_ids``; ``max_len`` too small for the separators.
    """
    out = []
    for i, ex in enumerate(examples):
        if ex.label not in label_ids:
            raise TaskError(f"example {ex.id or i} ({ex.lang}): label {ex.label!r} is not in the task's label set "
                            f"{sorted(label_ids)}")
        a = _pieces(vocab, [ex.text])[0]
        b = _pieces(vocab, [ex.text_pair])[0] if ex.text_pair is not None else None
        room = max_len - (3 if b is not None else 2)
        if room < 1:
            raise TaskError(f"max_len={max_len} leaves no room for text between the separators")
        if b is None:
            ids = [EOS_ID, *a[:room], EOS_ID]
        else:
            while len(a) + len(b) > room:  # longest-first truncation, as BERT/XLM fine-tuning scripts do
                if len(a) >= len(b):
                    a = a[:-1]
                else:
                    b = b[:-1]
            ids = [EOS_ID, *a, EOS_ID, *b, EOS_ID]
        out.append(Encoded(np.array(ids, dtype=np.int64), ex.lang, np.array(label_ids[ex.label], dtype=np.int64), i))
    return out


def _context_pieces(vocab: Vocabulary, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Piece ids of ``text`` and each piece's (begin, end) character span in ``text`` (a span includes the
    whitespace the piece's ``▁`` stands for; callers strip it)."""
    try:
        proto = vocab.sp.encode(text, return_type="proto")
    except TypeError:  # sentencepiece < 0.2.1 names it differently
        proto = vocab.sp.encode(text, out_type="immutable_proto")
    ids, spans = [], []
    for p in proto.pieces:
        if p.begin == p.end and p.piece == "▁":  # a bare word-boundary piece covers no character
            continue
        ids.append(p.id)
        spans.append((p.begin, p.end))
    return ids, spans


def encode_qa(examples: list[QAExample], vocab: Vocabulary, max_len: int, doc_stride: int,
              max_question: int = 64) -> list[Encoded]:
    """QA windows ``</s> question </s> context window </s>`` with start/end labels (paper §3.2 QA).

    The first gold answer is the training target (as SQuAD v1.1 training does); a window that does not contain
    it whole is labelled (0, 0).

    Raises:
        TaskError: ``max_len`` leaves no room for context after the question; ``doc_stride`` < 1.
    """
    if doc_stride < 1:
        raise TaskError(f"doc_stride={doc_stride} must be ≥ 1")
    out = []
    for i, ex in enumerate(examples):
        q = _pieces(vocab, [ex.question])[0][:max_question]
        ctx, spans = _context_pieces(vocab, ex.context)
        room = max_len - len(q) - 3
        if room < 1:
            raise TaskError(f"max_len={max_len} leaves no room for the context after a {len(q)}-piece question")
        start_char = end_char = None
        if ex.answers:
            text, start_char = ex.answers[0]
            end_char = start_char + len(text)
        starts = list(range(0, max(len(ctx) - room, 0) + 1, doc_stride))
        if starts[-1] + room < len(ctx):
            starts.append(len(ctx) - room)
        for s in starts:
            window = ctx[s:s + room]
            wspans = spans[s:s + room]
            ids = [EOS_ID, *q, EOS_ID, *window, EOS_ID]
            offs = np.full((len(ids), 2), -1, dtype=np.int64)
            first = len(q) + 2
            offs[first:first + len(window)] = np.array(wspans, dtype=np.int64).reshape(-1, 2)
            lab = np.zeros(2, dtype=np.int64)
            if start_char is not None and window:
                tok = [j for j, (b, e) in enumerate(wspans) if e > start_char and b < end_char]
                if tok and wspans[0][0] <= start_char and wspans[-1][1] >= end_char:
                    lab[:] = (first + tok[0], first + tok[-1])
            out.append(Encoded(np.array(ids, dtype=np.int64), ex.lang, lab, i, offsets=offs))
    return out


def pad_batch(rows: list[Encoded], label_shape: str | None) -> dict[str, np.ndarray]:
    """Stack rows into padded arrays: ``ids`` (B, L) int64 padded with PAD, ``pad`` (B, L) bool (True = padding),
    ``labels`` (B, L) for ``label_shape='token'`` (padded with :data:`IGNORE`), (B,) for ``'sequence'``, (B, 2)
    for ``'qa'``, none for None (prediction)."""
    L = max(len(r.ids) for r in rows)
    ids = np.full((len(rows), L), PAD_ID, dtype=np.int64)
    pad = np.ones((len(rows), L), dtype=bool)
    for j, r in enumerate(rows):
        ids[j, :len(r.ids)] = r.ids
        pad[j, :len(r.ids)] = False
    if label_shape is None:
        return {"ids": ids, "pad": pad}
    if label_shape == "token":
        labels = np.full((len(rows), L), IGNORE, dtype=np.int64)
        for j, r in enumerate(rows):
            labels[j, :len(r.labels)] = r.labels
    else:
        labels = np.stack([r.labels for r in rows])
    return {"ids": ids, "pad": pad, "labels": labels}


__all__ = ["Encoded", "IGNORE", "encode_qa", "encode_texts", "encode_tokens", "pad_batch"]
