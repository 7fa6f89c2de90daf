"""Cross-lingual sentence retrieval without training (XTREME's Tatoeba protocol, Hu et al. 2020).

Each sentence is encoded as ``</s> sentence </s>`` with its own language (language embedding and φ), its
representation is the mean of the hidden states of one layer over its non-padding positions, and each sentence's
translation is retrieved as the cosine nearest neighbour among all sentences of the other language; accuracy@1 in
both directions (lang → pivot and pivot → lang).
"""
from __future__ import annotations

import torch

from ..data.vocab import EOS_ID, PAD_ID
from . import metrics
from .examples import ParallelPair, TaskError


@torch.no_grad()
def embed(encoder, vocab, texts: list[str], lang_index: int, layer: int, max_len: int,
          batch_size: int = 64) -> torch.Tensor:
    """Mean-pooled layer-``layer`` hidden states of ``texts`` (truncated to ``max_len`` tokens).

    Returns:
        (N, d) fp32 on CPU.
    """
    encoder.eval()
    device = encoder.tok_emb.weight.device
    out = []
    for s in range(0, len(texts), batch_size):
        pieces = vocab.encode(texts[s:s + batch_size])
        rows = [[EOS_ID, *p[:max_len - 2], EOS_ID] for p in pieces]
        L = max(map(len, rows))
        ids = torch.full((len(rows), L), PAD_ID, dtype=torch.int64)
        for j, r in enumerate(rows):
            ids[j, :len(r)] = torch.tensor(r)
        pad = ids == PAD_ID
        lang = torch.full((len(rows),), lang_index, dtype=torch.int64)
        h = encoder(ids.to(device), lang.to(device), pad.to(device), n_layers=layer).float().cpu()  # (B, L, d)
        keep = (~pad).unsqueeze(-1).float()
        out.append((h * keep).sum(1) / keep.sum(1))
    return torch.cat(out)


def evaluate_pairs(pre, pairs: list[ParallelPair], layer: int | None = None, max_len: int | None = None) -> dict:
    """Accuracy@1 of retrieving each pair's translation, both directions.

    Args:
        pre: a :class:`~negint_ds.analysis.pretrained.Pretrained` model.
        pairs: translation pairs, all of one language against one pivot.
        layer: hidden states of this layer (0 = embeddings; None: ``layers // 2``, as XTREME takes a middle layer).

    Returns:
        ``{"lang_to_pivot", "pivot_to_lang"}`` (fractions), ``n`` pairs, ``layer``.

    Raises:
        TaskError: no pairs, mixed languages, a language the model lacks, a layer outside [0, layers].
    """
    if not pairs:
        raise TaskError("no parallel pairs to retrieve")
    langs = {(p.lang, p.pivot) for p in pairs}
    if len(langs) != 1:
        raise TaskError(f"pairs mix language pairs {sorted(langs)}")
    (lang, pivot), = langs
    for l in (lang, pivot):
        if l not in pre.lang_ids:
            raise TaskError(f"language {l!r} is not a language of the pretrained model (it has {pre.lang_ids})")
    n_layers = pre.cfg.model.layers
    layer = n_layers // 2 if layer is None else layer
    if not 0 <= layer <= n_layers:
        raise TaskError(f"layer={layer} outside [0, {n_layers}]")
    max_len = max_len or pre.cfg.model.max_positions
    enc = pre.model.encoder
    src = embed(enc, pre.vocab, [p.text for p in pairs], pre.lang_ids.index(lang), layer, max_len)
    tgt = embed(enc, pre.vocab, [p.pivot_text for p in pairs], pre.lang_ids.index(pivot), layer, max_len)
    acc = metrics.retrieval_accuracy(src, tgt)
    return {"lang_to_pivot": acc["src_to_tgt"], "pivot_to_lang": acc["tgt_to_src"], "n": len(pairs), "layer": layer}


def read_parallel(path: str, pivot_path: str, lang: str, pivot: str = "en") -> list[ParallelPair]:
    """Two line-aligned UTF-8 files (XTREME's Tatoeba release: ``tatoeba.<lg>-eng.<lg>`` / ``….eng``).

    Raises:
        TaskError: a file is missing or the line counts differ (names both files and counts).
    """
    out = []
    texts = []
    for p in (path, pivot_path):
        try:
            with open(p, encoding="utf-8") as f:
                texts.append([line.rstrip("\n") for line in f])
        except FileNotFoundError as e:
            raise TaskError(f"parallel file not found: {p}") from e
    if len(texts[0]) != len(texts[1]):
        raise TaskError(f"{path} has {len(texts[0])} lines but {pivot_path} has {len(texts[1])}: not line-aligned")
    for i, (a, b) in enumerate(zip(*texts)):
        out.append(ParallelPair(a, b, lang, pivot, id=f"{path}:{i + 1}"))
    return out


__all__ = ["embed", "evaluate_pairs", "read_parallel"]
