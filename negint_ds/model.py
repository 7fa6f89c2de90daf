"""XLM-style Transformer encoder and masked-LM head (Lample & Conneau 2019; Wang et al. 2020 §3–4).

Embeddings: token + learned position + language, then LayerNorm and dropout (XLM's ``TransformerModel``).
Layers are post-LN as in XLM: ``x = LN(x + Attn(x)); x = LN(x + FFN(x))``. The MLM head is the tied
token embedding plus a bias, applied only at predicted positions (no ``(B, L, V)`` logits).

Language-specific capacity (paper §4, Table 2 rows +ffn, +attn, +adpt, +share adpt, +meta adpt):
any of LayerNorm, FFN and attention can exist once per language (:class:`PerLanguage`), and residual
bottleneck adapters (Appendix B) can follow the attention and/or the FFN sublayer, one per language
or one shared by all. Parameters under a :class:`PerLanguage` module are the language-specific φ_i
(named ``...per_lang.<i>...``); all others are the shared θ (see :mod:`negint_ds.params`).

Routing: every forward takes ``lang_ids`` (B,), each row's language, and optionally ``lang``, a Python
int meaning "every row is language ``lang``" (the paper trains one language per step). With ``lang``
the language's modules run on the whole batch; without it rows are gathered per language.

Dropout: by default PyTorch's fused kernels (``F.dropout``, dropout inside the SDPA attention kernel).
With :func:`set_explicit_dropout` every mask is drawn as ``torch.rand(shape, dtype=float32) >= p`` from the
current RNG state instead, and attention with dropout runs the math formula with that mask, so a given
seed gives the same masks in fp32 and bf16, on flash, efficient or math attention, eagerly or compiled
(with inductor's ``fallback_random``). Meta-learning needs this: its fp32 passes and the bf16 θ step must
see the same dropout (README, "Precision of the meta step").

Shapes: B batch, L sequence length, d model dim, H heads, V vocabulary, P predicted positions, b
adapter bottleneck. Parallelism (DeepSpeed ZeRO, data parallelism) is applied outside this file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .kernels import bottleneck_adapter


@dataclass(frozen=True)
class ModelDims:
    """Everything that fixes the parameter shapes: the model config plus data-derived sizes."""

    vocab_size: int
    n_langs: int
    pad_id: int
    cfg: ModelConfig
    #: Language ids by index (for error messages), e.g. ("sw", "en"); None: indices only.
    lang_names: tuple[str, ...] | None = None

    def describe_langs(self) -> str:
        """The model's languages for an error message, e.g. ``2 languages (0=sw, 1=en)``."""
        names = self.lang_names or tuple(str(i) for i in range(self.n_langs))
        return f"{self.n_langs} languages ({', '.join(f'{i}={n}' for i, n in enumerate(names))})"


def draw_keep_mask(shape: tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """Explicit dropout mask: ``rand(shape, fp32) >= p`` (bool) from the current RNG state of ``device``.

    Drawn in fp32 whatever the activations' dtype, so the same seed gives the same mask in fp32 and bf16.
    """
    return torch.rand(shape, dtype=torch.float32, device=device) >= p


class Dropout(nn.Dropout):
    """``nn.Dropout`` that draws its mask with :func:`draw_keep_mask` when ``explicit_dropout`` is set."""

    explicit_dropout: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.explicit_dropout and self.training and self.p > 0):
            return super().forward(x)
        return x * draw_keep_mask(x.shape, self.p, x.device).to(x.dtype) * (1.0 / (1.0 - self.p))


def attention_explicit_dropout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                               p: float) -> torch.Tensor:
    """softmax(q kᵀ/√Dh + mask) ⊙ D/(1−p) · v, D from :func:`draw_keep_mask`: SDPA's math formula, explicit mask.

    q, k, v: (B, H, L, Dh); mask: (B, 1, 1, L) bool, True = attend, or None. Returns (B, H, L, Dh). The
    softmax is taken in fp32 (fp64 for fp64). Materialises the (B, H, L, L) scores, unlike the flash/efficient
    kernels.
    """
    scores = torch.matmul(q, k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)  # (B, H, L, L)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
    probs = probs * draw_keep_mask(probs.shape, p, probs.device) * (1.0 / (1.0 - p))
    return torch.matmul(probs.to(v.dtype), v)


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (flash/efficient kernels on GPU);
    with ``explicit_dropout`` and attention dropout in training, through :func:`attention_explicit_dropout`."""

    explicit_dropout: bool = False

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
        p = self.p_drop if self.training else 0.0
        if p > 0 and self.explicit_dropout:
            y = attention_explicit_dropout(q, k, v, mask, p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(B, L, d))  # (B, L, d)


class FeedForward(nn.Module):
    """Position-wise FFN d → ffn_dim → d with GELU (or ReLU); XLM applies dropout to its output (in the layer)."""

    def __init__(self, dim: int, ffn_dim: int, activation: str):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(dim, ffn_dim), nn.Linear(ffn_dim, dim)
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))  # (B, L, d)


class BottleneckAdapter(nn.Module):
    """Residual bottleneck adapter (paper Appendix B): o = z + W_up g(W_down z + b_down) + b_up.

    Placed on a sublayer's output before the residual connection, as in the paper's code. Shapes:
    W_down (b, d), W_up (d, b); b = d/4 by default. Initialised like every other linear layer
    (PyTorch default), as in the official implementation. Without branch dropout (the paper's formula)
    it runs the fused Triton kernel on CUDA (:func:`negint_ds.kernels.bottleneck_adapter`); with dropout
    (the official code's variant, ``adapters.dropout > 0``) or under ZeRO-3 it runs the torch modules.
    """

    def __init__(self, dim: int, bottleneck: int, activation: str, dropout: float):
        super().__init__()
        self.down, self.up = nn.Linear(dim, bottleneck), nn.Linear(bottleneck, dim)
        self.activation = activation
        self.drop = Dropout(dropout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # ZeRO-3 gathers parameters in the submodules' own forward hooks: call them rather than read weights
        zero3 = hasattr(self.down.weight, "ds_id")
        if (self.drop.p == 0.0 or not self.training) and not zero3:
            return bottleneck_adapter(z, self.down.weight, self.down.bias, self.up.weight, self.up.bias,
                                      self.activation)  # (..., d)
        h = self.down(z)  # (..., b)
        h = F.gelu(h) if self.activation == "gelu" else F.relu(h)
        return z + self.drop(self.up(h))  # (..., d)


def check_language_ids(lang_ids: torch.Tensor | None, lang: int | None, n_langs: int, describe: str) -> None:
    """Refuse language indices outside [0, n_langs): a row of an unknown language has no φ to route to.

    Args:
        lang_ids: (B,) int64 row languages, or None to check ``lang`` only.
        lang: the language of every row (a Python int) or None.
        describe: the model's languages, for the message (:meth:`ModelDims.describe_langs`).

    Raises:
        ValueError: naming the offending id(s) and the model's languages.
    """
    if lang is not None:
        if not 0 <= lang < n_langs:
            raise ValueError(f"language id {lang} is out of range: the model has {describe}")
        return
    if lang_ids is not None and lang_ids.numel():
        bad = lang_ids[(lang_ids < 0) | (lang_ids >= n_langs)]
        if bad.numel():  # one host sync, only on the row-routed path (mixed-language batches)
            raise ValueError(f"language id(s) {sorted(set(bad.tolist()))} out of range: the model has {describe}")


class PerLanguage(nn.Module):
    """One copy of a module per language: the language-specific parameters φ_i live in ``per_lang[i]``.

    ``forward(x, lang_ids, lang, *row_args)`` runs copy ``lang`` on all rows when ``lang`` is given,
    else gathers the rows of each language (``row_args``, e.g. a padding mask, are gathered alike) and
    scatters the outputs back. Every wrapped module maps (B, ...) to the same shape.

    Raises (forward):
        ValueError: ``lang`` or an entry of ``lang_ids`` is outside [0, n_langs) (never routed to zeros).
    """

    def __init__(self, make: Callable[[], nn.Module], n_langs: int, describe: str | None = None):
        super().__init__()
        self.per_lang = nn.ModuleList(make() for _ in range(n_langs))
        self.describe = describe or f"{n_langs} languages"

    def forward(self, x: torch.Tensor, lang_ids: torch.Tensor, lang: int | None, *row_args) -> torch.Tensor:
        n = len(self.per_lang)
        if lang is not None:
            check_language_ids(None, lang, n, self.describe)
            return self.per_lang[lang](x, *row_args)
        out, routed = torch.zeros_like(x), 0
        for i, module in enumerate(self.per_lang):
            rows = (lang_ids == i).nonzero(as_tuple=True)[0]
            routed += rows.numel()
            if rows.numel():
                args = [a.index_select(0, rows) if a is not None else None for a in row_args]
                out = out.index_copy(0, rows, module(x.index_select(0, rows), *args))
        if routed != lang_ids.numel():  # some row matched no language: it would silently stay zero
            check_language_ids(lang_ids, None, n, self.describe)
        return out


def _route(module: nn.Module, x: torch.Tensor, lang_ids: torch.Tensor, lang: int | None, *row_args) -> torch.Tensor:
    if isinstance(module, PerLanguage):
        return module(x, lang_ids, lang, *row_args)
    return module(x, *row_args)


def _maybe_per_language(specific: bool, make: Callable[[], nn.Module], n_langs: int,
                        describe: str | None = None) -> nn.Module:
    return PerLanguage(make, n_langs, describe) if specific else make()


class TransformerLayer(nn.Module):
    """One post-LN encoder layer with optional language-specific sublayers and adapters.

    ``x = LN1(x + Adapter_attn(drop(Attn(x)))); x = LN2(x + Adapter_ffn(drop(FFN(x))))``; each of LN1/LN2,
    Attn, FFN may be per-language, and each adapter absent, shared or per-language.
    """

    def __init__(self, cfg: ModelConfig, n_langs: int, describe: str | None = None):
        super().__init__()
        spec, ad = set(cfg.language_specific), cfg.adapters
        d = cfg.dim
        self.attn = _maybe_per_language("attn" in spec, lambda: SelfAttention(d, cfg.heads, cfg.attention_dropout),
                                        n_langs, describe)
        self.ln_attn = _maybe_per_language("ln" in spec, lambda: nn.LayerNorm(d, eps=1e-12), n_langs, describe)
        self.ffn = _maybe_per_language("ffn" in spec, lambda: FeedForward(d, cfg.ffn_dim, cfg.activation), n_langs,
                                       describe)
        self.ln_ffn = _maybe_per_language("ln" in spec, lambda: nn.LayerNorm(d, eps=1e-12), n_langs, describe)
        self.drop = Dropout(cfg.dropout)

        def adapter(where: str) -> nn.Module | None:
            if ad.kind == "none" or where not in ad.placement:
                return None
            drop = cfg.dropout if ad.dropout is None else ad.dropout
            make = lambda: BottleneckAdapter(d, ad.bottleneck or d // 4, ad.activation, drop)  # noqa: E731
            return _maybe_per_language(ad.kind == "language", make, n_langs, describe)

        self.adapter_attn, self.adapter_ffn = adapter("attn"), adapter("ffn")

    def forward(self, x: torch.Tensor, lang_ids: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                lang: int | None = None) -> torch.Tensor:
        """x: (B, L, d); lang_ids: (B,) int64; lang: all rows' language or None. Returns (B, L, d)."""
        a = self.drop(_route(self.attn, x, lang_ids, lang, key_padding_mask))
        if self.adapter_attn is not None:
            a = _route(self.adapter_attn, a, lang_ids, lang)
        x = _route(self.ln_attn, x + a, lang_ids, lang)
        f = self.drop(_route(self.ffn, x, lang_ids, lang))
        if self.adapter_ffn is not None:
            f = _route(self.adapter_ffn, f, lang_ids, lang)
        return _route(self.ln_ffn, x + f, lang_ids, lang)


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
        self.drop = Dropout(cfg.dropout)
        self.layers = nn.ModuleList(TransformerLayer(cfg, dims.n_langs, dims.describe_langs())
                                    for _ in range(cfg.layers))
        for emb in (self.tok_emb, self.pos_emb, self.lang_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, mean=0.0, std=cfg.dim ** -0.5)
        with torch.no_grad():
            self.tok_emb.weight[dims.pad_id].zero_()

    def forward(self, input_ids: torch.Tensor, lang_ids: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                lang: int | None = None, phi_ids: torch.Tensor | None = None,
                n_layers: int | None = None) -> torch.Tensor:
        """input_ids: (B, L) int64; lang_ids: (B,) int64; key_padding_mask: (B, L) bool or None; lang: the
        language of every row (a Python int) or None to route rows by ``lang_ids``.

        Args:
            phi_ids: (B,) int64 or None: the language whose φ (language-specific modules) each row runs, when it
                differs from the language embedding's ``lang_ids`` (downstream option "test with the source
                language's φ"); None routes φ by ``lang_ids``. Ignored when ``lang`` is given.
            n_layers: run only the first ``n_layers`` layers (hidden states of that layer, e.g. for sentence
                retrieval); None runs all.

        Returns:
            (B, L, d) hidden states in the parameters' dtype.

        Raises:
            ValueError: L exceeds ``max_positions``; ``lang`` or (without ``lang``) an entry of ``lang_ids`` or
                ``phi_ids`` is outside [0, n_langs) — the message names the id and the model's languages;
                ``n_layers`` outside [0, layers].
        """
        B, L = input_ids.shape
        if L > self.pos_emb.num_embeddings:
            raise ValueError(f"sequence length {L} exceeds model.max_positions={self.pos_emb.num_embeddings}")
        # with ``lang`` the rows' ids only index the language embedding; without it they route φ (checked there)
        check_language_ids(lang_ids if lang is None and self.lang_emb is not None else None, lang,
                           self.dims.n_langs, self.dims.describe_langs())
        pos = torch.arange(L, device=input_ids.device)
        h = self.tok_emb(input_ids) + self.pos_emb(pos)[None]  # (B, L, d)
        if self.lang_emb is not None:
            h = h + self.lang_emb(lang_ids)[:, None, :]
        h = self.drop(self.ln_emb(h))
        if key_padding_mask is not None:
            h = h.masked_fill(key_padding_mask[..., None], 0.0)
        if n_layers is not None and not 0 <= n_layers <= len(self.layers):
            raise ValueError(f"n_layers={n_layers} outside [0, {len(self.layers)}]")
        if phi_ids is not None and lang is None:
            check_language_ids(phi_ids, None, self.dims.n_langs, self.dims.describe_langs())
        route = phi_ids if phi_ids is not None else lang_ids
        for layer in self.layers[:n_layers]:
            h = layer(h, route, key_padding_mask, lang)
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
                targets: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                lang: int | None = None, reduction: str = "mean") -> torch.Tensor:
        """Mean MLM cross-entropy (nats) over predicted positions (or each position's, ``reduction="none"``).

        Args:
            input_ids: (B, L) int64, already masked (see :mod:`negint_ds.mlm`).
            lang_ids: (B,) int64 language index of each row.
            pred_positions: (P,) int64 flat indices into B·L of the predicted tokens.
            targets: (P,) int64 original token ids at those positions.
            key_padding_mask: (B, L) bool, True at padding, or None.
            lang: the language of every row (Python int), or None to route rows by ``lang_ids``.
            reduction: ``mean`` (training) or ``none`` (evaluation's per-window sums).

        Returns:
            Scalar loss (fp32, or fp64 for a float64 model), or (P,) per-position losses with
            ``reduction="none"``. Perplexity is ``exp(mean loss)``.
        """
        hidden = self.encoder(input_ids, lang_ids, key_padding_mask, lang)
        return F.cross_entropy(self.logits_at(hidden, pred_positions), targets, reduction=reduction)


def build_model(cfg: ModelConfig, vocab_size: int, n_langs: int, pad_id: int = 0,
                lang_names: list[str] | tuple[str, ...] | None = None) -> MaskedLM:
    """Construct a :class:`MaskedLM` (fp32, on CPU; DeepSpeed moves and casts it).

    Args:
        lang_names: language ids by index, used in error messages (e.g. an out-of-range language id).

    Raises:
        ValueError: ``cfg.vocab_size`` is set and differs from the vocabulary's size, or ``lang_names`` does
            not hold ``n_langs`` names.
    """
    if cfg.vocab_size is not None and cfg.vocab_size != vocab_size:
        raise ValueError(f"model.vocab_size={cfg.vocab_size} but the prepared vocabulary has {vocab_size} pieces")
    if lang_names is not None and len(lang_names) != n_langs:
        raise ValueError(f"lang_names has {len(lang_names)} names for {n_langs} languages")
    return MaskedLM(ModelDims(vocab_size=vocab_size, n_langs=n_langs, pad_id=pad_id, cfg=cfg,
                              lang_names=tuple(lang_names) if lang_names is not None else None))


def set_explicit_dropout(model: nn.Module, explicit: bool) -> int:
    """Switch every dropout of ``model`` (hidden, adapter branch, attention) to explicit masks or back.

    Returns:
        The number of modules switched.
    """
    n = 0
    for mod in model.modules():
        if isinstance(mod, (Dropout, SelfAttention)):
            mod.explicit_dropout = explicit
            n += 1
    return n


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (a tied weight counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def flops_per_token(cfg: ModelConfig, seq_len: int, vocab_size: int, mask_prob: float) -> float:
    """Approximate training FLOPs per input token (forward + backward = 3 × forward, matmuls only).

    Per layer: 2·(4d² + 2d·ffn) for the projections, 2·2·L·d for attention scores and values, and
    2·2·d·b per adapter; the MLM head adds 2·d·V for each predicted token (a fraction ``mask_prob``).
    Language-specific copies do not add FLOPs: each token runs one copy.
    """
    d = cfg.dim
    ad = cfg.adapters
    n_adapters = 0 if ad.kind == "none" else len(set(ad.placement))
    per_layer = 2 * (4 * d * d + 2 * d * cfg.ffn_dim) + 4 * seq_len * d + n_adapters * 4 * d * (ad.bottleneck or d // 4)
    return 3.0 * (cfg.layers * per_layer + mask_prob * 2 * d * vocab_size)


__all__ = ["BottleneckAdapter", "Dropout", "FeedForward", "MaskedLM", "ModelDims", "PerLanguage", "SelfAttention",
           "TransformerLayer", "XLMEncoder", "attention_explicit_dropout", "build_model", "check_language_ids",
           "count_parameters", "draw_keep_mask", "flops_per_token", "set_explicit_dropout"]
