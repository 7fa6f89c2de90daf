"""XLM-style Transformer encoder and masked-LM head (Lample & Conneau 2019; Wang et al. 2020 §3).

Embeddings: token + learned position + language, then LayerNorm and dropout (XLM's ``TransformerModel``).
Layers are post-LN as in XLM: ``x = LN(x + Attn(x)); x = LN(x + FFN(x))``. The MLM head is the tied
token embedding plus a bias, applied only at predicted positions (no ``(B, L, V)`` logits).

Shapes: B batch, L sequence length, d model dim, H heads, V vocabulary, P predicted positions.
Every forward takes ``lang_ids`` (B,), each row's language: the language embedding uses it now, and
language-specific components (per-language LayerNorm/FFN/attention/adapters) will route on it.
Parallelism (DeepSpeed ZeRO, data parallelism) is applied outside this file.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


@dataclass(frozen=True)
class ModelDims:
    """Everything that fixes the parameter shapes: the model config plus data-derived sizes."""

    vocab_size: int
    n_langs: int
    pad_id: int
    cfg: ModelConfig


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (flash/efficient kernels on GPU)."""

    def __init__(self, dim: int, heads: int, attention_dropout: float):
        super().__init__()
        self.heads, self.head_dim, self.p_drop = heads, dim // heads, attention_dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, d); key_padding_mask: (B, L) bool, True at padding, or None. Returns (B, L, d)."""
        B, L, d = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 × (B, H, L, Dh)
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # (B, 1, 1, L) True=attend
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.p_drop if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, L, d))  # (B, L, d)


class FeedForward(nn.Module):
    """Position-wise FFN d → ffn_dim → d with GELU (or ReLU) and XLM's dropout after the activation."""

    def __init__(self, dim: int, ffn_dim: int, activation: str, dropout: float):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(dim, ffn_dim), nn.Linear(ffn_dim, dim)
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.drop(self.act(self.lin1(x))))  # (B, L, d)


class TransformerLayer(nn.Module):
    """One post-LN encoder layer. ``lang_ids`` is accepted so language-specific variants share the signature."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = SelfAttention(cfg.dim, cfg.heads, cfg.attention_dropout)
        self.ln_attn = nn.LayerNorm(cfg.dim, eps=1e-12)
        self.ffn = FeedForward(cfg.dim, cfg.ffn_dim, cfg.activation, cfg.dropout)
        self.ln_ffn = nn.LayerNorm(cfg.dim, eps=1e-12)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, lang_ids: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, d); lang_ids: (B,) int64. Returns (B, L, d)."""
        x = self.ln_attn(x + self.drop(self.attn(x, key_padding_mask)))
        return self.ln_ffn(x + self.drop(self.ffn(x)))


class XLMEncoder(nn.Module):
    """Token + position (+ language) embeddings and a stack of :class:`TransformerLayer`.

    Initialisation follows XLM: embeddings N(0, d^-1/2) with a zero padding row; linear layers keep
    PyTorch's default; LayerNorm weight 1, bias 0.
    """

    def __init__(self, dims: ModelDims):
        super().__init__()
        cfg = dims.cfg
        self.dims = dims
        self.tok_emb = nn.Embedding(dims.vocab_size, cfg.dim, padding_idx=dims.pad_id)
        self.pos_emb = nn.Embedding(cfg.max_positions, cfg.dim)
        self.lang_emb = nn.Embedding(dims.n_langs, cfg.dim) if cfg.lang_embeddings and dims.n_langs > 1 else None
        self.ln_emb = nn.LayerNorm(cfg.dim, eps=1e-12)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.layers))
        for emb in (self.tok_emb, self.pos_emb, self.lang_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, mean=0.0, std=cfg.dim ** -0.5)
        with torch.no_grad():
            self.tok_emb.weight[dims.pad_id].zero_()

    def forward(self, input_ids: torch.Tensor, lang_ids: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids: (B, L) int64; lang_ids: (B,) int64; key_padding_mask: (B, L) bool or None.

        Returns:
            (B, L, d) hidden states in the parameters' dtype.

        Raises:
            ValueError: L exceeds ``max_positions`` or a language id is out of range.
        """
        B, L = input_ids.shape
        if L > self.pos_emb.num_embeddings:
            raise ValueError(f"sequence length {L} exceeds model.max_positions={self.pos_emb.num_embeddings}")
        pos = torch.arange(L, device=input_ids.device)
        h = self.tok_emb(input_ids) + self.pos_emb(pos)[None]  # (B, L, d)
        if self.lang_emb is not None:
            h = h + self.lang_emb(lang_ids)[:, None, :]
        h = self.drop(self.ln_emb(h))
        if key_padding_mask is not None:
            h = h.masked_fill(key_padding_mask[..., None], 0.0)
        for layer in self.layers:
            h = layer(h, lang_ids, key_padding_mask)
        return h


class MaskedLM(nn.Module):
    """XLM masked language model: :class:`XLMEncoder` + tied output projection with bias.

    ``forward`` computes the mean cross-entropy over the P predicted positions only: hidden states are
    gathered at ``pred_positions`` before the (P, d) × (d, V) projection, so cost and memory scale with
    P ≈ 0.15·B·L instead of B·L.
    """

    def __init__(self, dims: ModelDims):
        super().__init__()
        self.encoder = XLMEncoder(dims)
        self.out_bias = nn.Parameter(torch.zeros(dims.vocab_size))

    @property
    def dims(self) -> ModelDims:
        return self.encoder.dims

    def logits_at(self, hidden: torch.Tensor, pred_positions: torch.Tensor) -> torch.Tensor:
        """hidden: (B, L, d); pred_positions: (P,) flat indices into B·L. Returns (P, V) logits, fp16/bf16
        upcast to fp32 so the softmax cross-entropy is computed in fp32."""
        h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, pred_positions)  # (P, d)
        logits = F.linear(h, self.encoder.tok_emb.weight, self.out_bias)  # (P, V)
        return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits

    def forward(self, input_ids: torch.Tensor, lang_ids: torch.Tensor, pred_positions: torch.Tensor,
                targets: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean MLM cross-entropy (nats) over predicted positions.

        Args:
            input_ids: (B, L) int64, already masked (see :mod:`negint_ds.mlm`).
            lang_ids: (B,) int64 language index of each row.
            pred_positions: (P,) int64 flat indices into B·L of the predicted tokens.
            targets: (P,) int64 original token ids at those positions.
            key_padding_mask: (B, L) bool, True at padding, or None.

        Returns:
            Scalar loss (fp32, or fp64 for a float64 model). Perplexity is ``exp(loss)``.
        """
        hidden = self.encoder(input_ids, lang_ids, key_padding_mask)
        return F.cross_entropy(self.logits_at(hidden, pred_positions), targets)


def build_model(cfg: ModelConfig, vocab_size: int, n_langs: int, pad_id: int = 0) -> MaskedLM:
    """Construct a :class:`MaskedLM` (fp32, on CPU; DeepSpeed moves and casts it).

    Raises:
        ValueError: ``cfg.vocab_size`` is set and differs from the vocabulary's size.
    """
    if cfg.vocab_size is not None and cfg.vocab_size != vocab_size:
        raise ValueError(f"model.vocab_size={cfg.vocab_size} but the prepared vocabulary has {vocab_size} pieces")
    return MaskedLM(ModelDims(vocab_size=vocab_size, n_langs=n_langs, pad_id=pad_id, cfg=cfg))


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (a tied weight counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def flops_per_token(cfg: ModelConfig, seq_len: int, vocab_size: int, mask_prob: float) -> float:
    """Approximate training FLOPs per input token (forward + backward = 3 × forward, matmuls only).

    Per layer: 2·(4d² + 2d·ffn) for the projections and 2·2·L·d for attention scores and values; the
    MLM head adds 2·d·V for each predicted token (a fraction ``mask_prob`` of tokens).
    """
    d = cfg.dim
    per_layer = 2 * (4 * d * d + 2 * d * cfg.ffn_dim) + 4 * seq_len * d
    return 3.0 * (cfg.layers * per_layer + mask_prob * 2 * d * vocab_size)


__all__ = ["FeedForward", "MaskedLM", "ModelDims", "SelfAttention", "TransformerLayer", "XLMEncoder",
           "build_model", "count_parameters", "flops_per_token"]
