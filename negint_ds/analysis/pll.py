"""Pseudo-log-likelihood bits per character: a validation metric that does not depend on the vocabulary.

Why
---
Mono and JointPair models (paper §2–3) are trained with different SentencePiece vocabularies, so the same
sentence is a different number of pieces for each, and their validation perplexities (exp of the mean
cross-entropy *per piece*) measure different things: a vocabulary that splits words more finely has more,
easier pieces and a lower perplexity per piece for the same text. To compare them we need a score of the
*text*, summed over the whole text and divided by something the vocabulary does not change.

What
----
Pseudo-log-likelihood (Salazar et al. 2020, "Masked Language Model Scoring"): for every piece w_t of a
sentence, mask it, run the model, and take log P(w_t | rest); PLL(sentence) = Σ_t log P(w_t | rest).
It sums over *every* piece once, with a deterministic context, so two models scoring the same text give two
totals over the same characters. The reported figures are

* bits per character ``bpc = −Σ PLL / (ln 2 · Σ chars)`` over the split's sentences, chars = Unicode code
  points of the cleaned sentence as read from ``text/<lang>.<split>.txt`` (without the newline); and
* pseudo-perplexity per word ``pppl_word = exp(−Σ PLL / Σ words)``, words = whitespace-separated tokens of
  the same text, as a secondary figure.

PLL is not a normalised likelihood (the conditionals of a masked LM need not come from one joint
distribution), so bpc here is not an entropy bound; it is a relative score for models evaluated on the same
sentences with the same variant. :func:`bpc_table` records a SHA-256 of the scored text per row so that
this can be checked.

Design choices
--------------
*Why not the masked-token loss per character?* The training/validation MLM loss is a mean over a random 15%
of the pieces, predicted from a context in which 15% of the pieces are corrupted (80/10/10). Both the share
of the text that is predicted and the share of the context that is destroyed are fixed *per piece*, i.e.
they cover different amounts of text under different vocabularies; rescaling a per-piece mean by
pieces/characters does not undo that, and the random subset adds sampling noise. PLL predicts every piece
once from an uncorrupted context (only the scored word's own right part is hidden, see below), so the sum
is a deterministic function of (model, text).

*Why the PLL-word-l2r variant (default)?* Kauf & Ivanova 2023 ("A Better Way to Do Masked Language Model
Scoring") show that the original PLL over-scores words split into several pieces: when "▁sou" "ven" "ir"
is scored piece by piece, each piece sees its siblings, so the word is nearly free. A vocabulary that
segments more finely would then look better — exactly the bias a cross-vocabulary comparison must avoid.
In PLL-word-l2r, scoring piece t of a word also masks the pieces of the same word to the RIGHT of t; the
word's score is then Σ_t log P(w_t | w_<t of the word, the rest of the sentence), which by the chain rule
is log P(word | rest) for a model whose conditionals are consistent — the same whatever the segmentation.
A piece starts a word when its SentencePiece piece begins with "▁" (the first piece of the sentence always
does; ``<unk>`` and punctuation glued to a word continue it, as they do in the whitespace word count).
``variant="original"`` masks only piece t.

*Characters, not words, as the main denominator.* Words (whitespace tokens) do not exist in languages
written without spaces (zh, ja, th: a "word" is a clause), whereas characters exist in every script and
are fixed by the text alone. Both counts come from the cleaned text, never from the pieces.

*Input layout.* One sentence per row: its pieces followed by ``</s>`` — the sentence separator of the
training streams (they have no ``<s>``) — with the language's embedding/φ (``lang=lang_index``). The
``</s>`` is context, never scored. ``<unk>`` pieces are scored like any other (the model never learned to
predict ``<unk>``, so a vocabulary with poor coverage is penalised, not rewarded); their number is reported.

*Long sentences (more than max_positions − 1 pieces).* They are not truncated: every piece is scored, in
the ``max_positions``-long window of the sequence ``pieces + [</s>]`` centred on it,
``start = clamp(t − max_positions // 2, 0, n + 1 − max_positions)``. Each masked copy is its own forward
row anyway, so the centred window costs nothing extra; the piece simply loses the context beyond the
window. Such sentences are counted in ``truncated`` (their context, not their pieces, was truncated).

*Cost.* One forward row per piece: a sentence of n pieces costs n forwards of length ≤ n + 1, O(n²) tokens
instead of O(n) for the MLM evaluation. Rows are batched (``batch_size`` masked copies per forward), and
with ``torch.distributed`` initialised sentence i is scored on rank i % world and the sums all-reduced;
still, this is for analyses and final reports, not for every evaluation during training.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import os
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..atomic import atomic_write_json, atomic_write_text
from ..config import ExperimentConfig
from ..data.vocab import EOS_ID, PAD_ID, Vocabulary
from ..model import MaskedLM
from .pretrained import AnalysisError, Pretrained, load_pretrained, run_config
from .tables import write_csv

VARIANTS = ("word_l2r", "original")
#: SentencePiece's word-boundary marker (U+2581), prefixed to the first piece of every whitespace word.
WORD_MARK = "\u2581"


class PLLError(AnalysisError):
    """PLL scoring cannot run on the given input (unknown variant, bad batch size, …)."""


def word_starts(vocab: Vocabulary, ids: Sequence[int]) -> np.ndarray:
    """Which pieces start a word: (n,) bool, True where the piece's string begins with "▁".

    Special pieces (``<unk>``) are treated as word-internal; ``ids`` are a sentence's pieces without ``</s>``.
    """
    sp = vocab.sp
    return np.fromiter((sp.id_to_piece(int(i)).startswith(WORD_MARK) for i in ids), dtype=bool, count=len(ids))


def masked_rows(ids: Sequence[int], starts: Sequence[bool], variant: str, max_positions: int,
                mask_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The masked copies of one sentence, one per piece (see the module docstring for the rules).

    Args:
        ids: the sentence's n piece ids (no ``</s>``).
        starts: (n,) bool, True where a piece starts a word (:func:`word_starts`).
        variant: ``"word_l2r"`` (mask piece t and the pieces of its word right of t) or ``"original"`` (t only).
        max_positions: the model's longest sequence; a row is at most this long.
        mask_id: the ``<mask>`` id.

    Returns:
        rows: (n, L) int64, L = min(n + 1, max_positions): ``ids + [</s>]`` (or its window centred on t), masked;
        pos: (n,) int64, the position of piece t inside row t;
        targets: (n,) int64, the original id of piece t.

    Raises:
        PLLError: unknown variant, ``max_positions < 2``, or ``starts`` of the wrong length.
    """
    if variant not in VARIANTS:
        raise PLLError(f"PLL variant {variant!r} unknown; use one of {VARIANTS}")
    if max_positions < 2:
        raise PLLError(f"max_positions={max_positions}: a row needs room for a piece and </s>")
    n = len(ids)
    starts = np.asarray(starts, dtype=bool)
    if starts.shape != (n,):
        raise PLLError(f"starts has shape {starts.shape}, expected ({n},)")
    if n == 0:
        return np.zeros((0, 1), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    seq = np.append(np.asarray(ids, dtype=np.int64), EOS_ID)  # (n+1,)
    t = np.arange(n)
    if variant == "word_l2r":
        # word_end[t] = index of the next word start after t (or n): pieces t … word_end−1 are masked together
        nxt = np.where(np.append(starts[1:], True), np.arange(1, n + 1), n + 1)  # start index following each t
        word_end = np.minimum.accumulate(nxt[::-1])[::-1]
    else:
        word_end = t + 1
    L = min(n + 1, max_positions)
    start = np.clip(t - max_positions // 2, 0, n + 1 - L)  # all zero when the sentence fits
    glob = start[:, None] + np.arange(L)[None, :]  # (n, L) index into seq of each row position
    rows = seq[glob]
    rows[(glob >= t[:, None]) & (glob < word_end[:, None])] = mask_id
    return rows, t - start, seq[:n].copy()


def summarize(nats: float, chars: int, words: int) -> dict:
    """bpc = −nats / (ln 2 · chars) and pppl_word = exp(−nats / words) from a total PLL ``nats`` (≤ 0, natural log).

    NaN where the count is 0 (nothing to normalise by).
    """
    bpc = -nats / (math.log(2.0) * chars) if chars else float("nan")
    pppl = math.exp(-nats / words) if words else float("nan")
    return {"bpc": bpc, "pppl_word": pppl}


def _dist_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def pll_scores(model: MaskedLM, vocab: Vocabulary, sentences: Sequence[str], lang_index: int,
               variant: str = "word_l2r", batch_size: int = 128, device: str | torch.device = "cpu",
               progress: bool = True) -> dict:
    """Pseudo-log-likelihood of ``sentences`` under ``model`` in language slot ``lang_index``.

    Every piece of every sentence is scored once (module docstring: layout, variants, long sentences). The
    model is moved to ``device`` (``nn.Module.to``, in place) and run in eval mode; its previous train/eval
    mode is restored afterwards. With ``torch.distributed`` initialised, sentence i is scored on rank
    i % world and the per-sentence sums are all-reduced, so every rank returns the same result.

    Args:
        model: a :class:`~negint_ds.model.MaskedLM` (fp32 for analysis).
        vocab: the model's vocabulary (its SentencePiece model segments the text).
        sentences: cleaned sentences, one per item, without newlines.
        lang_index: the language's index in the model (embedding and φ slot).
        variant: ``"word_l2r"`` (Kauf & Ivanova 2023, default) or ``"original"`` (Salazar et al. 2020).
        batch_size: masked copies (rows) per forward; it changes speed, not the result (up to float rounding).
        device: where to run.
        progress: show a tqdm bar (pieces scored) on rank 0.

    Returns:
        ``nats`` (float, Σ PLL in nats, ≤ 0), ``chars``, ``words``, ``pieces`` (scored pieces, ``</s>`` excluded),
        ``sentences``, ``unk_pieces``, ``truncated`` (sentences longer than max_positions − 1 pieces, scored in
        centred windows), ``bpc`` (bits per character), ``pppl_word``, ``variant``, and ``sentence_nats``
        (list of float, each sentence's PLL in nats, in input order).

    Raises:
        PLLError: unknown variant, ``batch_size < 1``; ValueError (from the model): ``lang_index`` out of range.
    """
    if variant not in VARIANTS:
        raise PLLError(f"PLL variant {variant!r} unknown; use one of {VARIANTS}")
    if batch_size < 1:
        raise PLLError(f"batch_size={batch_size} must be >= 1")
    sentences = list(sentences)
    bad = [i for i, s in enumerate(sentences) if "\n" in s]
    if bad:
        raise PLLError(f"sentence(s) {bad[:5]} contain a newline; pass one sentence per item")
    max_pos = model.encoder.pos_emb.num_embeddings
    encoded = vocab.encode(sentences) if sentences else []
    rank, world = _dist_world()
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()

    n_sent = len(sentences)
    sent_nats = np.zeros(n_sent, dtype=np.float64)
    mine = [i for i in range(n_sent) if i % world == rank]
    # longest first: consecutive rows then have similar lengths, so little padding per batch
    mine.sort(key=lambda i: (-len(encoded[i]), i))
    total_rows = sum(len(encoded[i]) for i in mine)
    bar = tqdm(total=total_rows, desc=f"PLL ({variant})", unit="piece",
               disable=not progress or rank != 0 or not sys.stderr.isatty(),
               leave=False)
    buf_rows: list[np.ndarray] = []  # pending rows, each (L_i,), with their scored position, target, sentence
    buf_pos: list[int] = []
    buf_tgt: list[int] = []
    buf_sent: list[int] = []

    def flush(k: int) -> None:
        rows, pos, tgt, owner = buf_rows[:k], buf_pos[:k], buf_tgt[:k], buf_sent[:k]
        del buf_rows[:k], buf_pos[:k], buf_tgt[:k], buf_sent[:k]
        lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=k)
        L = int(lens.max())
        ids = np.full((k, L), PAD_ID, dtype=np.int64)
        for j, r in enumerate(rows):
            ids[j, :len(r)] = r
        input_ids = torch.from_numpy(ids).to(device)
        pad = None
        if (lens < L).any():  # only when padding exists: then attention must not see it
            pad = torch.from_numpy(np.arange(L)[None, :] >= lens[:, None]).to(device)
        flat = torch.from_numpy(np.arange(k) * L + np.asarray(pos, dtype=np.int64)).to(device)
        targets = torch.as_tensor(tgt, dtype=torch.int64, device=device)
        lang_ids = torch.full((k,), lang_index, dtype=torch.int64, device=device)
        ce = model(input_ids, lang_ids, flat, targets, key_padding_mask=pad, lang=lang_index, reduction="none")
        np.add.at(sent_nats, np.asarray(owner, dtype=np.int64), -ce.double().cpu().numpy())
        bar.update(k)

    try:
        with torch.inference_mode():
            for i in mine:
                ids = encoded[i]
                if not ids:
                    continue
                rows, pos, tgt = masked_rows(ids, word_starts(vocab, ids), variant, max_pos, vocab.mask_id)
                buf_rows.extend(rows)
                buf_pos.extend(pos.tolist())
                buf_tgt.extend(tgt.tolist())
                buf_sent.extend([i] * len(ids))
                while len(buf_rows) >= batch_size:
                    flush(batch_size)
            if buf_rows:
                flush(len(buf_rows))
    finally:
        bar.close()
        model.train(was_training)

    if world > 1:
        dev = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" \
            else torch.device("cpu")
        t = torch.from_numpy(sent_nats).to(dev)
        torch.distributed.all_reduce(t)  # each sentence is non-zero on exactly one rank
        sent_nats = t.cpu().numpy()

    nats = math.fsum(sent_nats.tolist())
    chars = sum(len(s) for s in sentences)
    words = sum(len(s.split()) for s in sentences)
    out = {"nats": nats, "chars": chars, "words": words, "pieces": sum(len(e) for e in encoded),
           "sentences": n_sent, "unk_pieces": sum(int(t == vocab.sp.unk_id()) for e in encoded for t in e),
           "truncated": sum(len(e) > max_pos - 1 for e in encoded), "variant": variant}
    out.update(summarize(nats, chars, words))
    out["sentence_nats"] = sent_nats.tolist()
    return out


def read_sentences(path: str, max_sentences: int | None = None) -> list[str]:
    """The first ``max_sentences`` lines (all when None) of a one-sentence-per-line UTF-8 file, without newlines.

    Split on "\\n" only (not on other Unicode line breaks), so the text is exactly what ``prepare`` wrote.

    Raises:
        PLLError: ``max_sentences < 1``.
    """
    if max_sentences is not None and max_sentences < 1:
        raise PLLError(f"max_sentences={max_sentences} must be >= 1 (or None for all)")
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines if max_sentences is None else lines[:max_sentences]


def text_sha256(sentences: Sequence[str]) -> str:
    """Hex SHA-256 of the sentences joined by newlines: equal digests mean two models scored the same text."""
    return hashlib.sha256("".join(s + "\n" for s in sentences).encode("utf-8")).hexdigest()


def score_run(pre: Pretrained, lang: str, split: str = "valid", max_sentences: int | None = None,
              variant: str = "word_l2r", batch_size: int = 128, device: str | torch.device = "cpu",
              progress: bool = True) -> dict:
    """PLL of the first ``max_sentences`` sentences of ``lang``'s prepared ``split`` under a pretrained run.

    The selection is the file's first N lines — deterministic, so two runs whose data share the split (the
    split is a hash of each sentence's key, :mod:`negint_ds.data.split`) score the same text; ``text_sha256``
    in the result lets a caller check it.

    Returns:
        :func:`pll_scores`'s dict plus ``run_dir``, ``lang``, ``split``, ``text_sha256``, ``step`` (of the weights).

    Raises:
        AnalysisError: the run has no language ``lang`` or no text for ``split``; PLLError: bad arguments.
    """
    index = pre.lang_index(lang)
    sentences = read_sentences(pre.text_path(lang, split), max_sentences)
    out = pll_scores(pre.model, pre.vocab, sentences, index, variant=variant, batch_size=batch_size, device=device,
                     progress=progress)
    out.update(run_dir=pre.run_dir, lang=lang, split=split, text_sha256=text_sha256(sentences), step=pre.step)
    return out


def _run_name(run_dir: str, cfg: ExperimentConfig) -> str:
    return cfg.name or os.path.basename(os.path.normpath(run_dir))


def _valid_ppl(run_dir: str, lang: str) -> tuple[float | None, int | None]:
    """The run's own validation perplexity of ``lang`` (``final_ppl.json``) and its step; None when absent."""
    path = os.path.join(run_dir, "final_ppl.json")
    if not os.path.isfile(path):
        return None, None
    with open(path, encoding="utf-8") as f:
        final = json.load(f)
    r = (final.get("valid") or {}).get(lang) or {}
    return r.get("ppl"), final.get("step")


BPC_COLUMNS = ("run", "lang", "bpc", "pppl_word", "valid_ppl", "valid_ppl_step", "sentences", "chars", "words",
               "pieces", "pieces_per_word", "unk_pieces", "truncated", "variant", "split", "step", "text_sha256",
               "run_dir")


def bpc_table(run_dirs: Sequence[str], langs: Sequence[str] | None = None, split: str = "valid",
              max_sentences: int | None = 1000, out_dir: str | None = None, variant: str = "word_l2r",
              batch_size: int = 128, device: str | torch.device = "cpu", progress: bool = True) -> list[dict]:
    """Score every run on every language and write ``bpc.csv`` and ``bpc.md`` (rank 0) in ``out_dir``.

    Each row (run, lang) holds the PLL bits per character and pseudo-perplexity per word, the run's own
    validation perplexity per piece from ``final_ppl.json`` beside it (not comparable across vocabularies —
    that is why bpc is there), and what was scored (sentences, characters, words, pieces, SHA-256 of the text).
    The Markdown table marks with "†" a language whose scored text differs between runs.

    Args:
        run_dirs: finished run directories (each with ``export/``).
        langs: languages to score; None: every language of each run.
        max_sentences: the first N sentences of each split (None: all).
        out_dir: where to write; None: nothing is written.

    Returns:
        The rows (dicts with :data:`BPC_COLUMNS`), in run then language order.

    Raises:
        AnalysisError: a run directory without config.yaml, a run that lacks one of ``langs`` (checked for every
            run before any scoring), no export, no text for ``split``; PLLError: bad arguments.
    """
    if not run_dirs:
        raise PLLError("bpc_table needs at least one run directory")
    plan = []
    for rd in run_dirs:  # check every run's languages before the (slow) scoring of any
        cfg = run_config(rd)
        run_langs = list(langs) if langs is not None else cfg.lang_ids
        missing = [l for l in run_langs if l not in cfg.lang_ids]
        if missing:
            raise AnalysisError(f"language(s) {missing} are not languages of the model in {os.path.abspath(rd)} "
                                f"(it has {cfg.lang_ids}); drop them or pick runs that have them")
        plan.append((rd, _run_name(rd, cfg), run_langs))
    rows = []
    for rd, name, run_langs in plan:
        pre = load_pretrained(rd)
        for lang in run_langs:
            r = score_run(pre, lang, split, max_sentences, variant=variant, batch_size=batch_size, device=device,
                          progress=progress)
            ppl, ppl_step = _valid_ppl(pre.run_dir, lang)
            rows.append({"run": name, "lang": lang, "bpc": r["bpc"], "pppl_word": r["pppl_word"], "valid_ppl": ppl,
                         "valid_ppl_step": ppl_step, "sentences": r["sentences"], "chars": r["chars"],
                         "words": r["words"], "pieces": r["pieces"],
                         "pieces_per_word": r["pieces"] / r["words"] if r["words"] else float("nan"),
                         "unk_pieces": r["unk_pieces"], "truncated": r["truncated"], "variant": variant,
                         "split": split, "step": r["step"], "text_sha256": r["text_sha256"], "run_dir": pre.run_dir})
        del pre  # free the model before loading the next run
    if out_dir is not None and _dist_world()[0] == 0:
        os.makedirs(out_dir, exist_ok=True)
        write_csv(rows, BPC_COLUMNS, os.path.join(out_dir, "bpc.csv"))
        atomic_write_text(os.path.join(out_dir, "bpc.md"), _markdown(rows, split, variant))
        atomic_write_json(os.path.join(out_dir, "bpc.json"), rows)
    return rows


def _markdown(rows: list[dict], split: str, variant: str) -> str:
    digests: dict[str, set[str]] = {}
    for r in rows:
        digests.setdefault(r["lang"], set()).add(r["text_sha256"])
    f = lambda v, fmt: "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)  # noqa: E731
    lines = [f"PLL bits per character on the {split} split (PLL variant: {variant}):", "",
             "| run | lang | bpc | pseudo-ppl / word | valid ppl / piece (step) | sentences | chars | pieces / word "
             "| truncated |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = " †" if len(digests[r["lang"]]) > 1 else ""
        step = f" ({r['valid_ppl_step']})" if r["valid_ppl_step"] is not None else ""
        lines.append(f"| {r['run']} | {r['lang']}{mark} | {f(r['bpc'], '.4f')} | {f(r['pppl_word'], '.2f')} | "
                     f"{f(r['valid_ppl'], '.2f')}{step} | {r['sentences']:,} | {r['chars']:,} | "
                     f"{f(r['pieces_per_word'], '.3f')} | {r['truncated']} |")
    notes = ["", "bpc = −Σ PLL / (ln 2 · Σ characters), pseudo-ppl / word = exp(−Σ PLL / Σ whitespace words), over the "
             "same sentences for every run (negint_ds.analysis.pll). Validation perplexity is per SentencePiece "
             "piece: comparable only between runs with the same vocabulary; bpc is comparable across vocabularies.",
             "truncated: sentences longer than max_positions − 1 pieces, each piece scored in a window centred on it."]
    if any(len(d) > 1 for d in digests.values()):
        notes.append("† the runs scored different text for this language (different data or split): bpc values "
                     "are not comparable across those runs.")
    return "\n".join(lines + notes) + "\n"


__all__ = ["BPC_COLUMNS", "PLLError", "VARIANTS", "bpc_table", "masked_rows", "pll_scores", "read_sentences",
           "score_run", "summarize", "text_sha256", "word_starts"]
