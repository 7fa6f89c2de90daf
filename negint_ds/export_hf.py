"""Export a pretrained *plain* model to Hugging Face ``transformers`` (``XLMWithLMHeadModel`` + a fast tokenizer).

``python -m negint_ds.export_hf --run RUN_DIR --out DIR [--checkpoint TAG] [--overwrite]`` writes DIR with
``config.json`` + ``model.safetensors`` (:class:`transformers.XLMWithLMHeadModel`), ``tokenizer.json`` +
``tokenizer_config.json`` (a ``PreTrainedTokenizerFast`` built from the run's SentencePiece model, loadable
offline with ``AutoTokenizer.from_pretrained(DIR)``), a copy of ``spm.model``, and ``negint_ds_export.json``
(source run, step, vocabulary SHA-256, languages, the logit difference measured at export).

Only plain models export: no language-specific φ (per-language LayerNorm/FFN/attention) and no adapters, which
HF XLM has no place for. The HF model computes the same function as ours at every non-padding position; the
export runs both on a probe batch and refuses (:class:`ExportError`) if their logits differ.

Feeding the exported model (what pretraining saw):

* ``input_ids``: SentencePiece ids, each sentence followed by ``</s>`` (id 3); pretraining windows are
  cut from a stream ``s1 </s> s2 </s> ...`` with no ``<s>`` and no padding. ``tok(text)`` appends one ``</s>``
  (``tok(a, b)`` gives ``a </s> b </s>``); ``tok.encode(text, add_special_tokens=False)`` equals
  ``Vocabulary.encode([text])[0]``. Unlike ``SentencePieceProcessor.encode``, the literal text ``<mask>`` (and
  ``<s>``, ``</s>``, ``<pad>``, ``<unk>``) is read as that special token, so ``"a <mask> b"`` masks one token.
* ``attention_mask``: (B, L) 1 at real tokens, 0 at padding (pad id 0). Pass it: without it HF XLM infers
  right-padding from ``input_ids != pad``.
* ``langs``: (B, L) int64 language id of every position, ``config.lang2id[lang]`` (the run's language order;
  one language per row in pretraining), e.g. ``torch.full_like(input_ids, config.lang2id["sw"])``. Pass it
  whenever ``config.use_lang_emb``: HF XLM silently skips the language embedding when ``langs`` is None.
* no ``token_type_ids``: HF XLM would add *token* embeddings of those ids.

At padding positions HF XLM zeroes the hidden states after every layer, ours only after the embeddings: the
two agree at real tokens only (padding keys are masked out of attention in both).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from .data.vocab import BOS_ID, EOS_ID, MASK_PIECE, N_SPECIAL, PAD_ID, UNK_ID, Vocabulary
from .model import BottleneckAdapter, FeedForward, MaskedLM, PerLanguage

if TYPE_CHECKING:
    from .analysis.pretrained import Pretrained

log = logging.getLogger("negint_ds")

#: Largest max-abs logit difference between ours and the HF model on the export's probe batch (fp32 on CPU
#: differs by ~1e-6: the attention runs as SDPA here and as explicit matmuls there).
EXPORT_TOLERANCE = 1e-3
#: Name of the provenance file written beside the HF files.
EXPORT_INFO = "negint_ds_export.json"
_FORMAT = "negint_ds.hf_export"
_FORMAT_VERSION = 1


class ExportError(ValueError):
    """A model, vocabulary or output directory that cannot be exported exactly (the message says why)."""


# --------------------------------------------------------------------------------------------------- checks


def check_exportable(model: MaskedLM) -> None:
    """Refuse what ``XLMWithLMHeadModel`` cannot compute exactly.

    Raises:
        ExportError: the model has language-specific φ or adapters; its FFN width is not 4·dim (HF XLM fixes
            it); its activation is neither exact GELU nor ReLU; its LayerNorms differ in eps or lack affine
            parameters (HF XLM has one ``layer_norm_eps``).
    """
    cfg = model.dims.cfg
    per_lang = [name for name, m in model.named_modules() if isinstance(m, PerLanguage)]
    if per_lang or cfg.has_language_specific:
        raise ExportError(f"only plain models export to Hugging Face XLM: this one has language-specific φ "
                          f"(model.language_specific={list(cfg.language_specific)}, adapters.kind="
                          f"{cfg.adapters.kind!r}; per-language modules such as {per_lang[:2]}), which "
                          f"XLMWithLMHeadModel has no place for: one set of weights serves every language")
    if any(isinstance(m, BottleneckAdapter) for m in model.modules()):
        raise ExportError(f"only plain models export to Hugging Face XLM: this one has {cfg.adapters.kind} "
                          f"adapters (placement {list(cfg.adapters.placement)}), a sublayer XLMWithLMHeadModel "
                          f"does not have")
    if cfg.ffn_dim != 4 * cfg.dim:
        raise ExportError(f"model.ffn_dim={cfg.ffn_dim} but Hugging Face XLM fixes the FFN width at 4 x emb_dim = "
                          f"{4 * cfg.dim}: this model cannot be expressed as XLMWithLMHeadModel")
    for m in model.modules():
        if isinstance(m, FeedForward):
            act = m.act
            if not (isinstance(act, nn.ReLU) or (isinstance(act, nn.GELU) and act.approximate == "none")):
                raise ExportError(f"activation {act!r}: Hugging Face XLM offers exact (erf) GELU or ReLU only")
    eps = set()
    for name, m in model.named_modules():
        if isinstance(m, nn.LayerNorm):
            if not m.elementwise_affine or m.bias is None:
                raise ExportError(f"{name}: a LayerNorm without weight and bias; HF XLM's have both")
            eps.add(m.eps)
    if len(eps) != 1:
        raise ExportError(f"the model's LayerNorms use eps {sorted(eps)}; Hugging Face XLM has one layer_norm_eps "
                          f"for all of them")


def _check_vocab(model: MaskedLM, vocab: Vocabulary, lang_ids: Sequence[str]) -> None:
    dims = model.dims
    if vocab.size != dims.vocab_size:
        raise ExportError(f"{vocab.path} has {vocab.size} pieces but the model's embedding has {dims.vocab_size} "
                          f"rows: not the vocabulary it was trained with")
    if dims.pad_id != PAD_ID or vocab.mask_id != N_SPECIAL - 1:
        raise ExportError(f"the model's pad id {dims.pad_id} / the vocabulary's mask id {vocab.mask_id} are not "
                          f"negint_ds's ({PAD_ID}, {N_SPECIAL - 1})")
    if len(lang_ids) != dims.n_langs or len(set(lang_ids)) != len(lang_ids):
        raise ExportError(f"lang_ids {list(lang_ids)} must name the model's {dims.n_langs} languages once each, in "
                          f"index order")


# --------------------------------------------------------------------------------------------------- model


def hf_config(model: MaskedLM, lang_ids: Sequence[str]):
    """The ``transformers.XLMConfig`` of ``model`` (call :func:`check_exportable` first).

    Special ids are negint_ds's: pad 0, unk 1, bos ``<s>`` 2, eos ``</s>`` 3, mask 4. ``use_lang_emb`` is
    whether the model has a language embedding (``model.lang_embeddings`` and more than one language).
    """
    from transformers import XLMConfig

    cfg, enc = model.dims.cfg, model.encoder
    eps = next(m.eps for m in model.modules() if isinstance(m, nn.LayerNorm))
    gelu = isinstance(enc.layers[0].ffn.act, nn.GELU)
    return XLMConfig(
        vocab_size=model.dims.vocab_size, emb_dim=cfg.dim, n_layers=cfg.layers, n_heads=cfg.heads,
        dropout=cfg.dropout, attention_dropout=cfg.attention_dropout, gelu_activation=gelu,
        sinusoidal_embeddings=False, causal=False, asm=False, n_langs=model.dims.n_langs,
        use_lang_emb=enc.lang_emb is not None, max_position_embeddings=enc.pos_emb.num_embeddings,
        embed_init_std=cfg.dim ** -0.5, layer_norm_eps=eps, is_encoder=True,
        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID, unk_index=UNK_ID,
        mask_index=N_SPECIAL - 1, mask_token_id=N_SPECIAL - 1, lang_id=0,
        lang2id={lang: i for i, lang in enumerate(lang_ids)}, id2lang=dict(enumerate(lang_ids)),
        tie_word_embeddings=True, architectures=["XLMWithLMHeadModel"])


#: Per-layer parameters: ours (under ``encoder.layers.<i>.``) -> HF's (under ``transformer.``, ``{i}`` the layer).
_LAYER_MAP = {"attn.out": "attentions.{i}.out_lin", "ln_attn": "layer_norm1.{i}", "ffn.lin1": "ffns.{i}.lin1",
              "ffn.lin2": "ffns.{i}.lin2", "ln_ffn": "layer_norm2.{i}"}
_EMB_MAP = {"encoder.tok_emb.weight": "transformer.embeddings.weight",
            "encoder.pos_emb.weight": "transformer.position_embeddings.weight",
            "encoder.lang_emb.weight": "transformer.lang_embeddings.weight",
            "encoder.ln_emb.weight": "transformer.layer_norm_emb.weight",
            "encoder.ln_emb.bias": "transformer.layer_norm_emb.bias",
            "out_bias": "pred_layer.proj.bias"}


def hf_state_dict(model: MaskedLM) -> dict[str, torch.Tensor]:
    """``model``'s weights under ``XLMWithLMHeadModel``'s names: fp32, on CPU, contiguous copies.

    Our fused attention input projection ``qkv`` (3d, d) holds q, k, v in that order (rows [0, d), [d, 2d),
    [2d, 3d), each head-major as HF's); it is split into ``q_lin``/``k_lin``/``v_lin``. The head's weight
    ``pred_layer.proj.weight`` is the token embedding (tied), its bias our ``out_bias``.

    Raises:
        ExportError: a parameter has no HF counterpart (e.g. an adapter).
    """
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu", torch.float32).contiguous().clone()
        if name in _EMB_MAP:
            out[_EMB_MAP[name]] = t
            continue
        parts = name.split(".")
        if parts[:2] != ["encoder", "layers"] or len(parts) < 5:
            raise ExportError(f"parameter {name} has no counterpart in Hugging Face XLM")
        i, sub, leaf = int(parts[2]), ".".join(parts[3:-1]), parts[-1]
        if sub == "attn.qkv":
            for which, chunk in zip(("q_lin", "k_lin", "v_lin"), t.chunk(3, dim=0)):
                out[f"transformer.attentions.{i}.{which}.{leaf}"] = chunk.contiguous()
        elif sub in _LAYER_MAP:
            out[f"transformer.{_LAYER_MAP[sub].format(i=i)}.{leaf}"] = t
        else:
            raise ExportError(f"parameter {name} has no counterpart in Hugging Face XLM")
    out["pred_layer.proj.weight"] = out["transformer.embeddings.weight"]
    return out


def to_hf_model(model: MaskedLM, lang_ids: Sequence[str]):
    """An fp32 ``XLMWithLMHeadModel`` (eval mode, CPU) holding ``model``'s weights.

    Raises:
        ExportError: see :func:`check_exportable` and :func:`hf_state_dict`; or HF's model lacks or adds a
            parameter (a transformers version whose XLM differs).
    """
    from transformers import XLMWithLMHeadModel

    check_exportable(model)
    hf = XLMWithLMHeadModel(hf_config(model, lang_ids)).float().eval()
    state = hf_state_dict(model)
    expected = set(hf.state_dict())
    if set(state) != expected:
        raise ExportError(f"Hugging Face XLM's parameters do not match the export's: missing "
                          f"{sorted(expected - set(state))[:4]}, unexpected {sorted(set(state) - expected)[:4]}")
    hf.load_state_dict(state, strict=True)
    if hf.pred_layer.proj.weight.data_ptr() != hf.transformer.embeddings.weight.data_ptr():
        raise ExportError("XLMWithLMHeadModel's output projection is not tied to its token embedding")
    return hf


def probe_batch(model: MaskedLM, length: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A small deterministic batch: (input_ids (B, L) int64, lang_ids (B,) int64, key_padding_mask (B, L) bool).

    B = 2 rows, L = min(length, max_positions); row 1 is padded over its second half; both rows hold a
    ``</s>``; row 0 is language 0, row 1 the last language.
    """
    dims = model.dims
    L = min(length, model.encoder.pos_emb.num_embeddings)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(N_SPECIAL, dims.vocab_size, (2, L), generator=g)
    ids[:, L // 3] = EOS_ID
    pad = torch.zeros(2, L, dtype=torch.bool)
    pad[1, max(1, L // 2 + 1):] = True
    ids[pad] = PAD_ID
    return ids, torch.tensor([0, dims.n_langs - 1]), pad


def hf_inputs(input_ids: torch.Tensor, lang_ids: torch.Tensor,
              key_padding_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Our forward's inputs as ``XLMWithLMHeadModel`` keyword arguments.

    Args:
        input_ids: (B, L) int64; lang_ids: (B,) int64 row languages; key_padding_mask: (B, L) bool, True at
            padding, or None.

    Returns:
        ``input_ids`` (B, L), ``attention_mask`` (B, L) int64 (1 = token), ``langs`` (B, L) int64.
    """
    mask = torch.ones_like(input_ids) if key_padding_mask is None else (~key_padding_mask).long()
    return {"input_ids": input_ids, "attention_mask": mask, "langs": lang_ids[:, None].expand_as(input_ids)}


@torch.no_grad()
def max_logit_difference(model: MaskedLM, hf, input_ids: torch.Tensor, lang_ids: torch.Tensor,
                         key_padding_mask: torch.Tensor) -> float:
    """Max |ours − HF| over the (P, V) logits at the P non-padding positions, both in eval mode, fp32 on CPU.

    ``model`` is run through an fp32 CPU copy when it is anything else; its train/eval mode is restored.
    """
    ref = model
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
        import copy

        ref = copy.deepcopy(model).to("cpu", torch.float32)
    was_training = ref.training
    ref.eval()
    try:
        positions = (~key_padding_mask).reshape(-1).nonzero(as_tuple=True)[0]
        ours = ref.logits_at(ref.encoder(input_ids, lang_ids, key_padding_mask), positions)
    finally:
        ref.train(was_training)
    theirs = hf(**hf_inputs(input_ids, lang_ids, key_padding_mask)).logits.reshape(-1, ours.shape[-1])[positions]
    return float((ours.float() - theirs.float()).abs().max())


# --------------------------------------------------------------------------------------------------- tokenizer


def hf_tokenizer(vocab: Vocabulary, max_length: int):
    """A ``PreTrainedTokenizerFast`` encoding as ``vocab`` does, with ids = the raw SentencePiece ids.

    Built from the SentencePiece model's own normaliser settings (precompiled NFKC charsmap, whitespace
    handling, dummy prefix) and pieces (BPE merges ranked by piece score, or the unigram scores) by
    ``transformers``' SentencePiece converter; special tokens are the vocabulary's pieces 0..4. The
    post-processor appends ``</s>`` to each sequence, as pretraining ended every sentence with it.

    Raises:
        ExportError: the SentencePiece model is neither BPE nor unigram; transformers is older than 5; the built
            tokenizer's special ids or size differ from the vocabulary's.
    """
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter

    proto = sentencepiece_model_pb2.ModelProto()
    with open(vocab.path, "rb") as f:
        proto.ParseFromString(f.read())
    kind = proto.trainer_spec.model_type
    if kind == sentencepiece_model_pb2.TrainerSpec.BPE:
        pieces = {p.piece: i for i, p in enumerate(proto.pieces)}  # the converter's BPE form: piece -> id
    elif kind == sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
        pieces = [(p.piece, p.score) for p in proto.pieces]  # unigram form: (piece, log-prob) by id
    else:
        raise ExportError(f"{vocab.path}: SentencePiece model type "
                          f"{sentencepiece_model_pb2.TrainerSpec.ModelType.Name(kind)} has no fast-tokenizer form "
                          f"(BPE or unigram only)")
    if not hasattr(SpmConverter, "build_tokenizer_from_spm_proto"):  # added in transformers 5
        import transformers

        raise ExportError(f"transformers {transformers.__version__} cannot build a tokenizer from a SentencePiece "
                          f"model's own settings; install transformers>=5")
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, pieces)
    eos = vocab.sp.id_to_piece(EOS_ID)
    backend.post_processor = processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A {eos} $B {eos}",
                                                           special_tokens=[(eos, EOS_ID)])
    names = [vocab.sp.id_to_piece(i) for i in range(N_SPECIAL)]
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=names[PAD_ID], unk_token=names[UNK_ID],
                                  bos_token=names[BOS_ID], eos_token=names[EOS_ID], mask_token=MASK_PIECE,
                                  model_max_length=max_length, padding_side="right",
                                  model_input_names=["input_ids", "attention_mask"])
    got = (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.mask_token_id)
    if got != tuple(range(N_SPECIAL)) or len(tok) != vocab.size:
        raise ExportError(f"the fast tokenizer built from {vocab.path} has special ids {got} and {len(tok)} tokens; "
                          f"expected {tuple(range(N_SPECIAL))} and {vocab.size}")
    return tok


def tokenizer_mismatches(tok, vocab: Vocabulary, n: int = 64, seed: int = 0) -> list[str]:
    """Texts on which ``tok.encode(text, add_special_tokens=False)`` differs from ``vocab.encode``.

    The texts are ``vocab.decode`` of random runs of normal pieces (every script the vocabulary knows), some
    with doubled spaces and a tab, plus the pieces themselves.
    """
    g = torch.Generator().manual_seed(seed)
    texts = []
    for k in range(n):
        ids = torch.randint(N_SPECIAL, vocab.size, (int(torch.randint(1, 24, (1,), generator=g)),), generator=g)
        text = vocab.decode(ids.tolist())
        texts.append(text if k % 4 else f" {text}  {text}\t{text} ")
    texts.append(" ".join(vocab.sp.id_to_piece(i).replace("\u2581", " ") for i in range(N_SPECIAL, vocab.size)))
    ours = vocab.encode(texts)
    # the backend (what ``tok.encode`` runs) directly: the wrapper would warn about texts longer than the model
    theirs = tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    return [t for t, ids, enc in zip(texts, ours, theirs) if enc.ids != ids]


# --------------------------------------------------------------------------------------------------- export


def _check_out_dir(out_dir: str, overwrite: bool, protect: Sequence[str] = ()) -> str:
    out = os.path.abspath(out_dir)
    real = os.path.realpath(out)
    for p in protect:  # never replace (even with overwrite) the run whose weights the export reads
        p = os.path.realpath(p)
        if real == p or p.startswith(real + os.sep):
            raise ExportError(f"{out} holds the run being exported ({p}); choose an output directory outside it")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ExportError(f"{out} exists and is not a directory")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; choose another --out or pass --overwrite to replace it")
    return out


def export_model(model: MaskedLM, vocab: Vocabulary, lang_ids: Sequence[str], out_dir: str, *,
                 overwrite: bool = False, provenance: dict | None = None, protect: Sequence[str] = ()) -> str:
    """Write ``model`` and ``vocab`` as a Hugging Face XLM model directory (see the module docstring).

    Args:
        model: a plain :class:`MaskedLM` (any device/dtype; weights are written in fp32). Not modified.
        vocab: the vocabulary it was trained with.
        lang_ids: its languages in index order (``config.lang2id``).
        out_dir: created (parents too) or, with ``overwrite``, replaced; absent or empty otherwise.
        overwrite: replace an existing non-empty ``out_dir``.
        provenance: extra fields for ``negint_ds_export.json`` (e.g. source run and step).
        protect: directories ``out_dir`` must neither be nor contain (the run the weights come from).

    Returns:
        The absolute path of ``out_dir``.

    Raises:
        ExportError: the model is not plain or cannot be expressed exactly (:func:`check_exportable`); the
            vocabulary does not fit it; the HF model's logits differ from ours on the probe batch by more
            than :data:`EXPORT_TOLERANCE`; the tokenizer encodes differently from ``vocab``; ``out_dir`` exists
            and is not empty (without ``overwrite``), is not a directory, or is or contains a ``protect`` directory. Nothing is left behind on error.
    """
    out = _check_out_dir(out_dir, overwrite, protect)
    _check_vocab(model, vocab, lang_ids)
    hf = to_hf_model(model, lang_ids)
    ids, langs, pad = probe_batch(model)
    diff = max_logit_difference(model, hf, ids, langs, pad)
    if not diff <= EXPORT_TOLERANCE:  # also catches NaN
        raise ExportError(f"the Hugging Face model's logits differ from ours by {diff:.3g} (> {EXPORT_TOLERANCE}) "
                          f"on the probe batch: this export would not be exact")
    tok = hf_tokenizer(vocab, hf.config.max_position_embeddings)
    bad = tokenizer_mismatches(tok, vocab)
    if bad:
        raise ExportError(f"the fast tokenizer encodes {len(bad)} probe text(s) differently from {vocab.path}, "
                          f"e.g. {bad[0][:80]!r}")

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".tmp", dir=parent)
    try:
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        # Name the tokenizer class transformers 4.x also knows (5.x reads it as its TokenizersBackend).
        _update_json(os.path.join(tmp, "tokenizer_config.json"), tokenizer_class="PreTrainedTokenizerFast")
        # transformers 4.x's XLMConfig reads pad/bos/eos as *_index fields (5.x maps them to *_token_id).
        _update_json(os.path.join(tmp, "config.json"), pad_index=PAD_ID, bos_index=BOS_ID, eos_index=EOS_ID)
        shutil.copyfile(vocab.path, os.path.join(tmp, "spm.model"))
        import transformers

        info = {"format": _FORMAT, "format_version": _FORMAT_VERSION,
                **(provenance or {}),
                "vocab_sha256": vocab.sha256, "vocab_size": vocab.size, "languages": list(lang_ids),
                "lang2id": {lang: i for i, lang in enumerate(lang_ids)},
                "special_ids": {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID, "mask": N_SPECIAL - 1},
                "input_format": "each sentence followed by </s> (id 3), no <s>; langs = lang2id[lang] at every "
                                "position; attention_mask 0 at padding",
                "probe_max_abs_logit_diff": diff, "transformers_version": transformers.__version__}
        with open(os.path.join(tmp, EXPORT_INFO), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2, ensure_ascii=False)
            f.write("\n")
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported to %s (max |Δlogit| on the probe batch %.2e)", out, diff)
    return out


def _update_json(path: str, **fields) -> None:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data.update(fields)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _install(tmp: str, out: str) -> None:
    """Move the finished ``tmp`` to ``out``; an existing ``out`` is swapped aside first and removed only after."""
    old = None
    if os.path.isdir(out) and os.listdir(out):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".old", dir=os.path.dirname(out))
        os.rmdir(old)  # only its unique name is needed: os.replace cannot move a directory onto a non-empty one
        os.replace(out, old)
    try:
        os.replace(tmp, out)  # onto an absent or empty directory: one rename
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_hf(pre: Pretrained, out_dir: str, *, overwrite: bool = False) -> str:
    """Export a pretrained run (:func:`negint_ds.analysis.pretrained.load_pretrained`) to ``out_dir``.

    Returns:
        The absolute path of ``out_dir``.

    Raises:
        ExportError: as :func:`export_model`, or ``out_dir`` is the run directory or one of its ancestors.
    """
    provenance = {"source_run": pre.run_dir, "source": pre.source, "step": pre.step, "recipe": pre.cfg.name}
    return export_model(pre.model, pre.vocab, pre.lang_ids, out_dir, overwrite=overwrite, provenance=provenance,
                        protect=[pre.run_dir])


def main(argv: list[str] | None = None) -> int:
    """``python -m negint_ds.export_hf``. Exit codes: 0 written, 2 bad input (``error: ...``, nothing written)."""
    from .analysis.pretrained import AnalysisError, load_pretrained
    from .config import ConfigError
    from .data.vocab import VocabularyError

    p = argparse.ArgumentParser(prog="python -m negint_ds.export_hf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished run directory (its export/), or one with --checkpoint")
    p.add_argument("--out", required=True, help="output directory (absent or empty unless --overwrite)")
    p.add_argument("--checkpoint", default=None, metavar="TAG", help="export checkpoint TAG (e.g. step_1000) instead "
                                                                     "of the run's final export")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        out = export_hf(load_pretrained(a.run, a.checkpoint), a.out, overwrite=a.overwrite)
    except (ExportError, AnalysisError, ConfigError, VocabularyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


__all__ = ["EXPORT_INFO", "EXPORT_TOLERANCE", "ExportError", "check_exportable", "export_hf", "export_model",
           "hf_config", "hf_inputs", "hf_state_dict", "hf_tokenizer", "main", "max_logit_difference", "probe_batch",
           "to_hf_model", "tokenizer_mismatches"]


if __name__ == "__main__":
    sys.exit(main())

