"""A pretrained XLM encoder with a task head (paper §3.2: linear classifiers on top of the pretrained model).

* ``token``: a linear layer + softmax on every position; only first sub-pieces carry labels (NER, POS).
* ``sequence``: a linear layer on the first position's hidden state (``</s>``, XLM's sequence summary), or on
  the mean over non-padding positions (``pool: mean``) (XNLI-style, Bible genre, sentiment).
* ``qa``: a linear layer giving start and end logits per position (TyDiQA-GoldP, SQuAD-style span prediction).

Routing of language-specific components: every row carries its language (``lang_ids``, the language embedding
and by default φ); ``phi_ids`` can route φ by another language (zero-shot "test with the source's φ").

Loss scaling for data parallelism: :meth:`TaskModel.forward` returns the **sum** of per-label losses times
``scale``; the trainer sets ``scale`` = (ranks × accumulation) / (labels in the global batch), so DeepSpeed's mean
over ranks and micro-batches gives the mean over the global batch's labels whatever the world size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model import XLMEncoder
from .encode import IGNORE

KINDS = ("token", "sequence", "qa")


class TaskModel(nn.Module):
    """Encoder + head.

    Args:
        encoder: the pretrained :class:`~negint_ds.model.XLMEncoder` (fine-tuned in place, φ included unless the
            caller freezes it).
        kind: ``token`` | ``sequence`` | ``qa``.
        n_labels: classes (token/sequence); ignored for ``qa`` (2 outputs: start, end).
        dropout: dropout on the encoder output before the head.
        pool: ``first`` or ``mean`` (sequence tasks).
        generator: RNG for the head's initialisation (N(0, 0.02) weights, zero bias, as BERT/XLM heads).

    Raises:
        ValueError: unknown ``kind`` or ``pool``; ``n_labels`` < 2 for a classification head.
    """

    def __init__(self, encoder: XLMEncoder, kind: str, n_labels: int, dropout: float = 0.1, pool: str = "first",
                 generator: torch.Generator | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"task kind {kind!r} is not one of {KINDS}")
        if pool not in ("first", "mean"):
            raise ValueError(f"pool {pool!r} is not 'first' or 'mean'")
        if kind != "qa" and n_labels < 2:
            raise ValueError(f"a {kind} classifier needs at least 2 labels, got {n_labels}")
        self.encoder, self.kind, self.pool = encoder, kind, pool
        d = encoder.tok_emb.weight.shape[1]
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(d, 2 if kind == "qa" else n_labels)
        with torch.no_grad():
            self.head.weight.normal_(0.0, 0.02, generator=generator)
            self.head.bias.zero_()

    def logits(self, ids: torch.Tensor, pad: torch.Tensor, lang_ids: torch.Tensor,
               phi_ids: torch.Tensor | None = None) -> torch.Tensor:
        """ids, pad: (B, L) int64 / bool (True = padding); lang_ids, phi_ids: (B,) int64.

        Returns:
            token: (B, L, C); sequence: (B, C); qa: (B, L, 2) with padding positions at −inf. fp32.
        """
        h = self.drop(self.encoder(ids, lang_ids, pad, phi_ids=phi_ids))  # (B, L, d)
        if self.kind == "sequence":
            if self.pool == "first":
                h = h[:, 0]
            else:
                keep = (~pad).unsqueeze(-1).to(h.dtype)
                h = (h * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        out = self.head(h).float()
        if self.kind == "qa":
            out = out.masked_fill(pad.unsqueeze(-1), float("-inf"))
        return out

    def forward(self, ids: torch.Tensor, pad: torch.Tensor, lang_ids: torch.Tensor, labels: torch.Tensor,
                scale: torch.Tensor, phi_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled summed cross-entropy (nats) of one micro-batch (see the module docstring).

        Args:
            labels: token (B, L) with :data:`~negint_ds.tasks.encode.IGNORE`; sequence (B,); qa (B, 2).
            scale: 0-d fp32 tensor, the factor applied to the summed loss.
        """
        z = self.logits(ids, pad, lang_ids, phi_ids)
        if self.kind == "token":
            loss = F.cross_entropy(z.reshape(-1, z.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                                   reduction="sum")
        elif self.kind == "sequence":
            loss = F.cross_entropy(z, labels, reduction="sum")
        else:  # mean of the start and end losses per question window (BERT's SQuAD objective)
            loss = 0.5 * (F.cross_entropy(z[..., 0], labels[:, 0], reduction="sum")
                          + F.cross_entropy(z[..., 1], labels[:, 1], reduction="sum"))
        return loss * scale


def n_loss_terms(kind: str, labels) -> int:
    """How many terms :meth:`TaskModel.forward` sums for ``labels`` (numpy/tensor): labelled tokens, or rows."""
    if kind == "token":
        return int((labels != IGNORE).sum())
    return int(labels.shape[0])


__all__ = ["KINDS", "TaskModel", "n_loss_terms"]
