"""Per-language validation perplexity (the paper's Figure 2): exp of mean MLM cross-entropy on masked tokens."""
from __future__ import annotations

import math

import torch

from ..mlm import MLMBatch
from .dist import all_reduce_sum


@torch.no_grad()
def evaluate(engine, batches_by_lang: dict[str, list[tuple[MLMBatch, bool]]]) -> dict[str, dict[str, float]]:
    """Score every language's fixed validation batches with the model in eval mode (no dropout).

    A collective: every rank must call it with the same number of batches per language.

    Args:
        engine: DeepSpeed engine (or any callable module taking ``MLMBatch`` fields and returning mean loss).
        batches_by_lang: from :func:`~negint_ds.data.batches.eval_batches`, in language-index order (every
            batch holds one language, so language-specific modules run on it whole); entries with
            ``counts=False`` pad ranks with fewer windows: they run (ZeRO-3 gathers need every rank) but
            are not scored.

    Returns:
        ``{lang: {"loss": mean nats per predicted token, "ppl": exp(loss), "tokens": predicted tokens}}``
        summed over all ranks.
    """
    engine.eval()
    device = engine.device
    out = {}
    try:
        for index, (lang, batches) in enumerate(batches_by_lang.items()):
            total = torch.zeros((), dtype=torch.float64, device=device)
            count = 0
            for b, counts in batches:
                mb = b.to(device)
                loss = engine(mb.input_ids, mb.lang_ids, mb.pred_positions, mb.targets, lang=index)
                if counts:
                    total += loss.double() * mb.targets.numel()
                    count += mb.targets.numel()
            s, n = all_reduce_sum([float(total), float(count)], device)
            loss = s / max(n, 1.0)
            out[lang] = {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": int(n)}
    finally:
        engine.train()
    return out
