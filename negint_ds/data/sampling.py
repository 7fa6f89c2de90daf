"""Language sampling P_i ∝ (n_i/Σn)^(1/T) (XLM; Wang et al. §3) and the per-step language schedule.

Every data-parallel rank must train on the same language at a step (one language per step, as in the
paper), and a resumed run must draw the same languages as an uninterrupted one. The schedule is
therefore a pure function of (seed, step): no state to checkpoint, no communication between ranks.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

_CHUNK = 1 << 16  # steps per RNG chunk: step t's draw depends only on (seed, t // _CHUNK)


def language_probs(counts: Sequence[float], temperature: float) -> np.ndarray:
    """Sampling probabilities P_i = p_i^(1/T) / Σ_j p_j^(1/T) with p_i = n_i / Σ_j n_j.

    T = 1 samples in proportion to data size; T → ∞ tends to uniform; XLM's exponent α = 0.7 is
    T = 1/α ≈ 1.43.

    Args:
        counts: n_i per language (sentences by default), all > 0.
        temperature: T > 0.

    Returns:
        float64 array of shape (len(counts),) summing to 1.

    Raises:
        ValueError: a count is not positive, or T <= 0.
    """
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 1 or n.size == 0 or np.any(n <= 0):
        raise ValueError(f"language counts must be a non-empty list of positive numbers, got {list(counts)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    # log-space keeps tiny probabilities exact for large T and very unbalanced corpora
    logw = (np.log(n) - np.log(n.sum())) / temperature
    w = np.exp(logw - logw.max())
    return w / w.sum()


class LanguageSchedule:
    """Which language trains at each optimiser step: a deterministic function of (seed, step).

    Draw t uses u_t ~ U[0, 1) from a counter-based stream (chunked by 2^16 steps), so it is identical
    on every rank, after a resume, and when ``max_steps`` is later extended.

    Args:
        probs: P_i from :func:`language_probs`, shape (n_langs,).
        seed: run seed.
    """

    def __init__(self, probs: Sequence[float], seed: int):
        self.probs = np.asarray(probs, dtype=np.float64)
        self.cdf = np.cumsum(self.probs)
        self.cdf[-1] = 1.0  # guard against rounding leaving u in (cdf[-1], 1)
        self.seed = int(seed)
        self._chunk_id = -1
        self._chunk: np.ndarray | None = None

    def _draws(self, chunk: int) -> np.ndarray:
        if chunk != self._chunk_id:
            u = np.random.default_rng([self.seed, 0x5A4D, chunk]).random(_CHUNK)
            self._chunk = np.searchsorted(self.cdf, u, side="right").astype(np.int64)
            self._chunk_id = chunk
        return self._chunk

    def lang_at(self, step: int) -> int:
        """Index of the language trained at 0-based ``step``."""
        return int(self._draws(step // _CHUNK)[step % _CHUNK])

    def counts_before(self, step: int) -> np.ndarray:
        """How many of steps 0..step-1 drew each language: int64 array (n_langs,)."""
        counts = np.zeros(len(self.probs), dtype=np.int64)
        full, rest = divmod(step, _CHUNK)
        for c in range(full):
            counts += np.bincount(self._draws(c), minlength=len(self.probs))
        if rest:
            counts += np.bincount(self._draws(full)[:rest], minlength=len(self.probs))
        return counts
