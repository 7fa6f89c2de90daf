"""From token streams to MLM micro-batches, identical across world sizes and across resumes.

Training (one language per optimiser step, as in the paper):

* :class:`WindowSampler` cuts a language's train stream into ``seq_len`` windows; each epoch uses a
  fresh random offset and permutation, so the sequence of windows is an infinite, deterministic list.
* At step t the :class:`~negint_ds.data.sampling.LanguageSchedule` picks language ℓ (the same on every
  rank). If ℓ was drawn c times before, the step's global batch is windows [c·G, (c+1)·G) of ℓ's list,
  G = micro × accumulation × world size. Micro-batch m = a·world + rank (accumulation step a) takes
  windows [c·G + m·micro, … + micro): each rank reads its own shard, and a 1-process run with 2
  accumulation steps sees exactly the micro-batches that a 2-process run sees.
* Masking of micro-batch m at step t uses the seed (seed, "mask", t, m).

Validation: the first windows of the valid stream, each masked with its own fixed seed, so every
evaluation (and every world size) scores the same predictions.
"""
from __future__ import annotations

import numpy as np
import torch

from ..config import MLMConfig
from ..mlm import MLMBatch, mask_tokens
from ..seeding import derive_seed
from .binarized import TokenStream
from .sampling import LanguageSchedule


class DataError(ValueError):
    """The data cannot feed the configured batches (e.g. a language has too little text for seq_len)."""


def min_stream_tokens(seq_len: int) -> int:
    """Fewest tokens a stream needs for :class:`WindowSampler` (one window at every epoch offset)."""
    return 2 * seq_len - 1


class WindowSampler:
    """Windows of ``seq_len`` tokens over one language's train stream, reshuffled every epoch.

    Epoch e has offset o_e ∈ [0, seq_len) and permutation π_e of n windows,
    n = (N − (seq_len − 1)) // seq_len, so every epoch has the same n and window k of the infinite
    list is ``tokens[o_e + π_e[j]·seq_len : … + seq_len]`` with (e, j) = divmod(k, n).

    Raises:
        DataError: the stream has fewer than 2·seq_len − 1 tokens.
    """

    def __init__(self, stream: TokenStream, seq_len: int, seed: int, lang_index: int, name: str = ""):
        n_tok = stream.num_tokens
        if n_tok < min_stream_tokens(seq_len):
            raise DataError(f"{name or stream.path}: {n_tok} train tokens is too few for seq_len={seq_len} "
                            f"(need >= {min_stream_tokens(seq_len)})")
        self.tokens, self.seq_len = stream.tokens, seq_len
        self.n = (n_tok - (seq_len - 1)) // seq_len
        self.seed, self.lang_index = seed, lang_index
        self._cache: dict[int, tuple[int, np.ndarray]] = {}

    def _epoch(self, e: int) -> tuple[int, np.ndarray]:
        if e not in self._cache:
            if len(self._cache) > 2:
                self._cache.pop(min(self._cache))
            rng = np.random.default_rng([self.seed, 0x57A7, self.lang_index, e])
            self._cache[e] = (int(rng.integers(0, self.seq_len)), rng.permutation(self.n))
        return self._cache[e]

    def windows(self, start: int, count: int) -> np.ndarray:
        """Windows start … start+count−1 of the infinite list: int64 array (count, seq_len)."""
        out = np.empty((count, self.seq_len), dtype=np.int64)
        ar = np.arange(self.seq_len)
        for i, k in enumerate(range(start, start + count)):
            e, j = divmod(k, self.n)
            off, perm = self._epoch(e)
            out[i] = self.tokens[off + perm[j] * self.seq_len + ar]
        return out


class TrainBatches:
    """Micro-batches for consecutive optimiser steps of this rank (see module docstring).

    Args:
        streams: train :class:`TokenStream` per language, in language-index order.
        schedule: which language trains at each step.
        micro_batch / grad_accum / world_size / rank: DeepSpeed's batch layout.
        start_step: first step to produce (on resume, the checkpoint's step).
    """

    def __init__(self, streams: list[TokenStream], schedule: LanguageSchedule, seq_len: int, micro_batch: int,
                 grad_accum: int, world_size: int, rank: int, mlm: MLMConfig, vocab_size: int, mask_id: int,
                 n_special: int, seed: int, start_step: int = 0, names: list[str] | None = None):
        names = names or [s.header.get("lang", "") for s in streams]
        self.samplers = [WindowSampler(s, seq_len, seed, i, n) for i, (s, n) in enumerate(zip(streams, names))]
        self.schedule, self.micro, self.accum, self.world, self.rank = schedule, micro_batch, grad_accum, world_size, rank
        self.mlm, self.vocab_size, self.mask_id, self.n_special, self.seed = mlm, vocab_size, mask_id, n_special, seed
        self.global_batch = micro_batch * grad_accum * world_size
        self.counts = schedule.counts_before(start_step)
        self.next_step = start_step

    def step(self, step: int) -> tuple[int, list[MLMBatch]]:
        """(language index, this rank's ``grad_accum`` micro-batches) for ``step``; call for consecutive steps.

        Raises:
            ValueError: ``step`` is not the next step (the window cursor would be wrong).
        """
        if step != self.next_step:
            raise ValueError(f"TrainBatches.step({step}) called out of order; expected step {self.next_step}")
        lang = self.schedule.lang_at(step)
        base = int(self.counts[lang]) * self.global_batch
        out = []
        for a in range(self.accum):
            m = a * self.world + self.rank
            tokens = torch.from_numpy(self.samplers[lang].windows(base + m * self.micro, self.micro))
            g = torch.Generator().manual_seed(derive_seed(self.seed, "mask", step, m))
            ids, pos, tgt = mask_tokens(tokens, self.mlm, self.vocab_size, self.mask_id, self.n_special, g)
            out.append(MLMBatch(ids, torch.full((self.micro,), lang, dtype=torch.int64), pos, tgt))
        self.counts[lang] += 1
        self.next_step += 1
        return lang, out


def eval_batches(stream: TokenStream, lang_index: int, seq_len: int, max_sequences: int | None, batch_size: int,
                 rank: int, world_size: int, mlm: MLMConfig, vocab_size: int, mask_id: int, n_special: int,
                 seed: int) -> list[tuple[MLMBatch, bool]]:
    """This rank's validation micro-batches for one language, as (batch, counts) pairs.

    Windows are contiguous from the stream's start; window w is masked with seed (seed, "eval", lang, w)
    independently of batching, so scores do not depend on batch size or world size. Every rank gets the
    same number of entries, because ZeRO-3 needs all ranks to run the same number of forwards: a rank
    with fewer windows pads with window 0, flagged ``counts=False`` (run, but not scored).

    Raises:
        DataError: the valid stream is shorter than one window.
    """
    n = stream.num_tokens // seq_len
    if n == 0:
        raise DataError(f"{stream.path}: valid split has {stream.num_tokens} tokens, fewer than seq_len={seq_len}; "
                        f"use a larger data.split.valid_fraction or a shorter train.seq_len")
    if max_sequences is not None:
        n = min(n, max_sequences)

    def make(windows: list[int]) -> MLMBatch:
        ids, pos, tgt = [], [], []
        for row, w in enumerate(windows):
            tok = torch.from_numpy(np.asarray(stream.tokens[w * seq_len:(w + 1) * seq_len], dtype=np.int64))[None]
            g = torch.Generator().manual_seed(derive_seed(seed, "eval", lang_index, w))
            i, p, t = mask_tokens(tok, mlm, vocab_size, mask_id, n_special, g)
            ids.append(i)
            pos.append(p + row * seq_len)
            tgt.append(t)
        return MLMBatch(torch.cat(ids), torch.full((len(windows),), lang_index, dtype=torch.int64), torch.cat(pos),
                        torch.cat(tgt))

    mine = list(range(rank, n, world_size))
    n_batches = -(-(-(-n // world_size)) // batch_size)
    out = [(make(mine[b * batch_size:(b + 1) * batch_size]), True) for b in range(n_batches)
           if mine[b * batch_size:(b + 1) * batch_size]]
    padding = make([0])
    return out + [(padding, False)] * (n_batches - len(out))
