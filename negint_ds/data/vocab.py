"""Shared SentencePiece vocabulary trained on a temperature-sampled mix of languages (XLM §3.1)."""
from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
import sentencepiece as spm

from .sampling import language_probs
from .sources.base import sha256_file

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
MASK_PIECE = "<mask>"
#: Ids below this are special (pad, unk, bos, eos, mask): never masked, never drawn as random tokens.
N_SPECIAL = 5
#: SentencePiece threads, fixed rather than os.cpu_count(): the model records the count and the unigram
#: trainer's sums depend on it, so a machine-dependent value would change spm.model from host to host.
SPM_THREADS = 8
#: How to re-create a data directory's files (named in errors; the recipe is the one whose data.dir it is).
PREPARE_COMMAND = "python -m negint_ds.prepare --config <recipe>"


class VocabularyError(ValueError):
    """A vocabulary cannot be trained or loaded, or does not match data or a checkpoint."""


class Vocabulary:
    """A trained SentencePiece model with the project's fixed special ids.

    Ids: 0 ``<pad>``, 1 ``<unk>``, 2 ``<s>``, 3 ``</s>`` (sentence separator in token streams),
    4 ``<mask>``; normal pieces start at :data:`N_SPECIAL`.

    Attributes:
        path: the ``.model`` file.
        sha256: hex SHA-256 of that file; token files and checkpoints record it to refuse mismatches.
        size: number of pieces (the model's vocabulary size).

    Raises:
        VocabularyError: the file is missing, unreadable, or lacks the expected special ids.
    """

    def __init__(self, path: str):
        fix = (f"data preparation writes it: run `{PREPARE_COMMAND}` with the recipe whose data.dir is "
               f"{os.path.dirname(os.path.abspath(path))} to re-create it")
        if not os.path.isfile(path):
            raise VocabularyError(f"vocabulary model not found: {path}; {fix}")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=path)
        except Exception as e:  # sentencepiece raises OSError/RuntimeError depending on version
            raise VocabularyError(f"cannot load SentencePiece model {path} ({e}); {fix}") from e
        self.path = path
        self.sha256 = sha256_file(path)
        self.size = self.sp.get_piece_size()
        self.mask_id = self.sp.piece_to_id(MASK_PIECE)
        got = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id(), self.mask_id)
        if got != (PAD_ID, UNK_ID, BOS_ID, EOS_ID, N_SPECIAL - 1):
            raise VocabularyError(f"{path}: special ids (pad, unk, bos, eos, mask) are {got}, expected "
                                  f"{(PAD_ID, UNK_ID, BOS_ID, EOS_ID, N_SPECIAL - 1)}; train it with negint_ds")

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (no bos/eos added)."""
        return self.sp.encode(list(texts), out_type=int, num_threads=os.cpu_count() or 1)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(list(ids))


def sample_mix(texts_by_lang: dict[str, Sequence[str]], temperature: float, total: int,
               seed: int) -> dict[str, np.ndarray]:
    """Indices of sentences per language for a temperature-sampled training mix.

    Language i gets ``round(q_i · S)`` sentences, q = :func:`language_probs` (counts, T) and
    ``S = min(total, Σ n_i)``; a language needing more than it has is sampled with replacement
    (up-sampling low-resource languages is the point of T > 1), otherwise without.

    Returns:
        {lang: int64 array of indices into that language's list}.
    """
    langs = list(texts_by_lang)
    counts = np.array([len(texts_by_lang[l]) for l in langs], dtype=np.int64)
    q = language_probs(counts, temperature)
    s = min(int(total), int(counts.sum()))
    rng = np.random.default_rng(seed)
    out = {}
    for lang, n_i, q_i in zip(langs, counts, q):
        want = max(1, int(round(q_i * s)))
        out[lang] = rng.choice(n_i, size=want, replace=bool(want > n_i))
    return out


def train_vocabulary(texts_by_lang: dict[str, Sequence[str]], out_prefix: str, size: int,
                     model_type: str = "bpe", temperature: float = 2.0, sample_sentences: int = 1_000_000,
                     character_coverage: float = 0.9995, seed: int = 0) -> Vocabulary:
    """Train a shared SentencePiece model on a temperature-sampled mix of the languages' train text.

    Args:
        texts_by_lang: cleaned train sentences per language id.
        out_prefix: writes ``<out_prefix>.model`` and ``<out_prefix>.vocab``.
        size: vocabulary size (paper: 32k), special pieces included.
        temperature: T of the mix, q_i ∝ (n_i/Σn)^(1/T) (XLM used exponent 0.5, T = 2).

    Raises:
        VocabularyError: SentencePiece rejects the settings, e.g. a vocabulary larger than the text
            supports (the message says which config field to change).
    """
    idx = sample_mix(texts_by_lang, temperature, sample_sentences, seed)
    mix = (texts_by_lang[lang][i] for lang, ii in idx.items() for i in ii)
    model = io.BytesIO()
    try:
        spm.set_random_generator_seed(seed)  # the trainer shuffles its input; fix it for reproducibility
        # From an iterator into memory, not from a temporary file to a path prefix: the model proto
        # records its input files and prefix, so those paths would make spm.model differ between two
        # identical preparations.
        spm.SentencePieceTrainer.train(
            sentence_iterator=mix, model_writer=model, vocab_size=size, model_type=model_type,
            character_coverage=character_coverage, pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            control_symbols=[MASK_PIECE], input_sentence_size=sum(len(ii) for ii in idx.values()),
            shuffle_input_sentence=True, max_sentence_length=1 << 16, num_threads=SPM_THREADS, minloglevel=2)
    except RuntimeError as e:
        raise VocabularyError(f"SentencePiece training failed ({e}); for small corpora lower data.vocab.size") from e
    with open(out_prefix + ".model", "wb") as f:
        f.write(model.getvalue())
    vocab = Vocabulary(out_prefix + ".model")
    with open(out_prefix + ".vocab", "w", encoding="utf-8") as f:  # what SentencePiece itself writes
        f.writelines(f"{vocab.sp.id_to_piece(i)}\t{vocab.sp.get_score(i):g}\n" for i in range(vocab.size))
    return vocab
