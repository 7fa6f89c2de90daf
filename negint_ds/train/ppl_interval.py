"""Validation perplexity with its masked-token count and a 95% interval: a percentile bootstrap over windows.

A validation set is a list of windows (``train.seq_len`` tokens each, see
:func:`~negint_ds.data.batches.eval_batches`); window i contributes ``loss_i`` (the summed cross-entropy, in
nats, of its n_i predicted tokens) and n_i. Perplexity is the ratio estimate ``exp(Σ loss_i / Σ n_i)``.

The interval resamples whole windows, not tokens: the tokens of one window share their context, so their
losses are correlated, and a token-level bootstrap would be too narrow. Recipe (fixed, so every rank and
every run computes the same numbers):

1. drop windows with no predicted token (they carry no loss), then sort the windows by (loss, n), so the
   result depends only on the set of windows, not on which rank or batch scored them (world-size invariant);
2. draw ``BOOTSTRAP_SAMPLES`` = 1000 resamples of the n windows with replacement, one replicate at a time,
   ``idx = rng.integers(0, n, size=n)`` from ``numpy.random.default_rng(BOOTSTRAP_SEED)``; each replicate's
   mean loss is ``loss[idx].sum() / n_tok[idx].sum()``;
3. the interval is ``exp`` of the 2.5th and 97.5th percentiles of those mean losses (``numpy.quantile``,
   linear interpolation); exp is monotone, so this is the percentile interval of the replicates'
   perplexities up to interpolation between two neighbouring replicates.

With fewer than two windows there is nothing to resample (every replicate is the same window) and the
interval is undefined (None), not zero-width. A percentile bootstrap over few windows is itself too narrow;
that is what the ``train.min_eval_tokens`` warning is for.
"""
from __future__ import annotations

import math

import numpy as np
import torch

#: Bootstrap replicates; the Monte-Carlo error of a 2.5% percentile from 1000 replicates is a few % of the
#: interval's half-width, well below the sampling error it measures.
BOOTSTRAP_SAMPLES = 1000
#: Fixed seed: the interval is a deterministic function of the windows (the same on every rank and rerun).
BOOTSTRAP_SEED = 20201116
#: Coverage of the reported interval.
LEVEL = 0.95
#: Losses above this are reported as perplexity exp(50) (an untrained model's loss can overflow exp).
MAX_LOSS = 50.0


def ppl(loss: float) -> float:
    """Perplexity ``exp(loss)`` of a mean loss in nats per token, capped at exp(50) to stay finite."""
    return math.exp(min(loss, MAX_LOSS))


def window_sums(token_losses: torch.Tensor, pred_positions: torch.Tensor, batch_size: int, seq_len: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum per-token losses into per-window (row) sums.

    Args:
        token_losses: (P,) float, cross-entropy in nats at each predicted position.
        pred_positions: (P,) int64 flat indices into B·L (as in :class:`~negint_ds.mlm.MLMBatch`).
        batch_size: B, the number of windows (rows) in the batch.
        seq_len: L.

    Returns:
        (loss_sums (B,) float64 nats, counts (B,) int64 predicted tokens), on the inputs' device; a row with
        no predicted token gets (0, 0).
    """
    rows = torch.div(pred_positions, seq_len, rounding_mode="floor")
    sums = torch.zeros(batch_size, dtype=torch.float64, device=token_losses.device)
    sums.index_add_(0, rows, token_losses.to(torch.float64))
    counts = torch.bincount(rows, minlength=batch_size)
    return sums, counts


def _canonical(loss_sums, counts) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64/int64 copies with empty windows dropped, sorted by (loss, count)."""
    loss_sums = np.asarray(loss_sums, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.int64)
    if loss_sums.ndim != 1 or loss_sums.shape != counts.shape:
        raise ValueError(f"loss_sums and counts must be 1-D of the same length, got shapes "
                         f"{loss_sums.shape} and {counts.shape}")
    if (counts < 0).any():
        raise ValueError("counts must be >= 0")
    keep = counts > 0
    loss_sums, counts = loss_sums[keep], counts[keep]
    order = np.lexsort((counts, loss_sums))  # last key is the primary one
    return loss_sums[order], counts[order]


def bootstrap_ppl_interval(loss_sums, counts, samples: int = BOOTSTRAP_SAMPLES, level: float = LEVEL,
                           seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of ``exp(Σ loss / Σ count)`` over windows (see the module docstring).

    Args:
        loss_sums: (n,) per-window summed cross-entropy, nats (array-like, any order).
        counts: (n,) per-window predicted-token counts (non-negative integers).
        samples: bootstrap replicates.
        level: coverage, e.g. 0.95.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        (lo, hi) perplexities with lo <= hi, or None when fewer than two windows have a predicted token.

    Raises:
        ValueError: mismatched shapes, negative counts, ``samples < 1`` or ``level`` outside (0, 1).
    """
    if samples < 1 or not 0 < level < 1:
        raise ValueError(f"need samples >= 1 and 0 < level < 1, got {samples}, {level}")
    loss_sums, counts = _canonical(loss_sums, counts)
    n = loss_sums.size
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for b in range(samples):  # one (n,) draw at a time: memory O(n) even for a whole valid split
        idx = rng.integers(0, n, size=n)
        means[b] = loss_sums[idx].sum() / counts[idx].sum()
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return ppl(float(lo)), ppl(float(hi))


def ppl_summary(loss_sums, counts) -> dict[str, float | int | None]:
    """Everything reported for one language's validation set, from its per-window sums (all ranks' windows).

    Args:
        loss_sums: (n,) per-window summed cross-entropy, nats.
        counts: (n,) per-window predicted-token counts.

    Returns:
        ``{"loss": mean nats per predicted token, "ppl": exp(loss), "ppl_lo", "ppl_hi": the 95% interval (None
        with fewer than two non-empty windows), "tokens": predicted tokens, "windows": n}``; an empty set
        gives loss 0, ppl 1.

    Raises:
        ValueError: as :func:`bootstrap_ppl_interval`.
    """
    windows = len(np.asarray(counts))
    sums, cnts = _canonical(loss_sums, counts)  # sorted: the same summation order on every rank
    tokens = int(cnts.sum())
    loss = float(sums.sum()) / max(tokens, 1)
    interval = bootstrap_ppl_interval(sums, cnts)
    lo, hi = interval if interval is not None else (None, None)
    return {"loss": loss, "ppl": ppl(loss), "ppl_lo": lo, "ppl_hi": hi, "tokens": tokens, "windows": windows}


__all__ = ["BOOTSTRAP_SAMPLES", "BOOTSTRAP_SEED", "LEVEL", "bootstrap_ppl_interval", "ppl", "ppl_summary",
           "window_sums"]
