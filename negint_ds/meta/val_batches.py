"""Batches for the meta objective's validation sum (1/|S|) Σ_{j∈S} L_val^j (Algorithm 1, φ step), and the
fresh train batches of the official code's φ step (``meta.phi_batch: fresh``).

Stateless like the training batches: at step t, language j's global batch is windows [t·G, (t+1)·G) of
j's window list (G = the global batch size), cut into micro-batches of ``micro`` windows; micro-batch m
goes to rank m mod world. Window order and masks are seeded by the purpose ("meta-val" or "meta-fresh"),
so the two never coincide even when both read the train split. So 1 process and N processes see the same
micro-batches, and a resumed run the same batches as an unbroken one.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..config import MLMConfig
from ..data.batches import DataError, WindowSampler
from ..data.binarized import TokenStream
from ..mlm import MLMBatch, mask_tokens
from ..seeding import derive_seed


def resolve_val_micro(val_batch_size: int, val_micro_batch: int | None, train_micro: int,
                      world_size: int) -> tuple[int, list[str]]:
    """Windows per validation micro-batch, and every problem with the meta-validation batch layout.

    Each rank holds ``val_batch_size / world_size`` windows of every language in the validation sum,
    cut into micro-batches of ``micro`` windows. Unset (``meta.val_micro_batch: null``), ``micro`` is
    the largest divisor of the per-rank share that does not exceed the train micro-batch:
    gcd(train micro-batch, val_batch_size / world). So the paper's 64 validation sequences work with the
    GPU configs' 128-sequence train micro-batches (micro 64 on one GPU, 8 on eight).

    Args:
        val_batch_size: ``meta.val_batch_size``, global windows per language and step.
        val_micro_batch: ``meta.val_micro_batch`` or None.
        train_micro: DeepSpeed's ``train_micro_batch_size_per_gpu``.
        world_size: data-parallel processes.

    Returns:
        (micro, problems): ``problems`` is empty when the layout works; each names the fields to change.
    """
    problems = []
    if val_batch_size % world_size:
        problems.append(f"meta.val_batch_size={val_batch_size} is not a multiple of the world size ({world_size}): "
                        f"every process needs the same number of validation sequences; use a multiple of "
                        f"{world_size}")
        return max(1, val_micro_batch or 1), problems
    per_rank = val_batch_size // world_size
    micro = val_micro_batch if val_micro_batch is not None else math.gcd(train_micro, per_rank)
    if per_rank % micro:
        problems.append(f"meta.val_batch_size={val_batch_size} must be a multiple of meta.val_micro_batch ({micro}) "
                        f"x world size ({world_size}); unset meta.val_micro_batch to derive it")
    return micro, problems


class MetaValBatches:
    """Validation micro-batches per (step, language) for this rank.

    Args:
        streams: per language, the valid streams (``source="valid"``, the paper's default) or the train
            streams (``source="train"``: fresh train batches, drawn in an order independent of training).
        val_batch_size: global windows per language and step (the official code caps it at 64).
        purpose: seeds window order and masks ("meta-val"; "meta-fresh" for the φ step's fresh train batch).
        micro: windows per micro-batch (see :func:`resolve_val_micro`).

    Raises:
        DataError: ``val_batch_size`` is not a multiple of micro × world size, or a stream is too short.
    """

    def __init__(self, streams: list[TokenStream], source: str, seq_len: int, val_batch_size: int, micro: int,
                 world_size: int, rank: int, mlm: MLMConfig, vocab_size: int, mask_id: int, n_special: int, seed: int,
                 names: list[str] | None = None, purpose: str = "meta-val"):
        if val_batch_size % (micro * world_size):
            raise DataError(f"meta.val_batch_size={val_batch_size} must be a multiple of the validation micro-batch "
                            f"({micro}) x world size ({world_size})")
        names = names or [str(i) for i in range(len(streams))]
        sampler_seed = derive_seed(seed, f"{purpose}-order", source)
        self.samplers = [WindowSampler(s, seq_len, sampler_seed, i, f"{n} ({source} split, {purpose})")
                         for i, (s, n) in enumerate(zip(streams, names))]
        self.n_micro = val_batch_size // micro
        self.global_batch, self.micro, self.world, self.rank = val_batch_size, micro, world_size, rank
        self.mlm, self.vocab_size, self.mask_id, self.n_special, self.seed = mlm, vocab_size, mask_id, n_special, seed
        self.purpose = purpose

    def languages(self, step: int, lang: int, include_self: bool, k: int | None) -> list[int]:
        """S for this step: every language (or every other than ``lang``), or a uniform random subset of size k.

        With a subset, (1/k) Σ_{j∈S} L_j is an unbiased estimate of the mean over all candidates. The
        draw depends only on (seed, step), so all ranks agree.
        """
        cand = [j for j in range(len(self.samplers)) if include_self or j != lang]
        if not cand:
            raise DataError("the validation sum is empty: with one language, meta.include_self must be true")
        if k is None or k >= len(cand):
            return cand
        rng = np.random.default_rng([self.seed, 0x5E7, step])
        return sorted(int(x) for x in rng.choice(cand, size=k, replace=False))

    def batches(self, step: int, lang: int) -> list[MLMBatch]:
        """This rank's validation micro-batches of language ``lang`` at ``step`` (CPU tensors)."""
        out = []
        base = step * self.global_batch
        for m in range(self.rank, self.n_micro, self.world):
            tokens = torch.from_numpy(self.samplers[lang].windows(base + m * self.micro, self.micro))
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.purpose, step, lang, m))
            ids, pos, tgt = mask_tokens(tokens, self.mlm, self.vocab_size, self.mask_id, self.n_special, g)
            out.append(MLMBatch(ids, torch.full((self.micro,), lang, dtype=torch.int64), pos, tgt))
        return out
