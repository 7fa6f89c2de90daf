"""XLM masked-LM corruption: choose 15% of tokens to predict; replace 80% by <mask>, 10% random, keep 10%.

XLM draws a Bernoulli per token; we choose exactly ``round(mask_prob · n_eligible)`` positions per
batch, uniformly without replacement, so the number of predicted tokens P (and the head's matmul) has
a fixed size for a given batch. The 80/10/10 choice is drawn per predicted token as in XLM. Special
tokens (pad, unk, bos, eos, mask: ids < ``n_special``) are never predicted or drawn as replacements.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import MLMConfig


@dataclass
class MLMBatch:
    """One micro-batch for :class:`~negint_ds.model.MaskedLM`.

    Attributes:
        input_ids: (B, L) int64, corrupted tokens.
        lang_ids: (B,) int64, language index of each row.
        pred_positions: (P,) int64, sorted flat indices into B·L of the predicted tokens.
        targets: (P,) int64, the original tokens there.
    """

    input_ids: torch.Tensor
    lang_ids: torch.Tensor
    pred_positions: torch.Tensor
    targets: torch.Tensor

    def to(self, device: torch.device | str) -> "MLMBatch":
        """The same batch on ``device`` (asynchronous copies from pinned memory)."""
        return MLMBatch(*(t.to(device, non_blocking=True) for t in
                          (self.input_ids, self.lang_ids, self.pred_positions, self.targets)))


def mask_tokens(tokens: torch.Tensor, cfg: MLMConfig, vocab_size: int, mask_id: int, n_special: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Corrupt a batch of token ids for MLM.

    Args:
        tokens: (B, L) int64 original ids (CPU).
        cfg: rates (``mask_prob``, ``mask_frac``/``random_frac``/``keep_frac``).
        vocab_size: V; random replacements are uniform over [n_special, V).
        mask_id: id of ``<mask>``.
        n_special: ids below this are never chosen.
        generator: CPU RNG; the result is a deterministic function of its state.

    Returns:
        (input_ids (B, L), pred_positions (P,), targets (P,)), all int64. P >= 1 if any token is eligible.
    """
    flat = tokens.reshape(-1)
    eligible = flat >= n_special
    n_elig = int(eligible.sum())
    k = max(1, round(cfg.mask_prob * n_elig)) if n_elig else 0
    # Uniform k-subset of eligible positions: smallest k random keys, ineligible keys pushed past 1.
    keys = torch.rand(flat.shape, generator=generator) + (~eligible).to(torch.float32) * 2.0
    pred = torch.topk(keys, k, largest=False, sorted=False).indices.sort().values
    targets = flat[pred].clone()
    u = torch.rand(k, generator=generator)
    random_ids = torch.randint(n_special, vocab_size, (k,), generator=generator)
    new = torch.where(u < cfg.mask_frac, torch.full_like(targets, mask_id),
                      torch.where(u < cfg.mask_frac + cfg.random_frac, random_ids, targets))
    corrupted = flat.clone()
    corrupted[pred] = new
    return corrupted.view_as(tokens), pred, targets
