"""Hugging Face export (negint_ds.export_hf): the exported XLMWithLMHeadModel computes our logits, the fast
tokenizer encodes as our SentencePiece vocabulary, non-plain models and occupied output directories are refused,
and a failed export leaves nothing behind."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
import yaml

import transformers  # noqa: E402  the export's dependency: installed by the [test] and [hf] extras

assert int(transformers.__version__.split(".")[0]) >= 5, "the export needs transformers >= 5 (pip install -e .[hf])"

from conftest import recipe  # noqa: E402
from negint_ds import export_hf as ex  # noqa: E402
from negint_ds.config import AdapterConfig, ModelConfig  # noqa: E402
from negint_ds.data.vocab import Vocabulary, train_vocabulary  # noqa: E402
from negint_ds.export_hf import ExportError, export_model, main  # noqa: E402
from negint_ds.model import build_model  # noqa: E402

#: Scripts of the tiny vocabulary's training text (and of the test sentences).
ALPHABETS = {
    "en": "abcdefghijklmnoprstuvwyzéèàçñü",
    "ru": "абвгдежзийклмнопрстуфхцчшщыэюя",
    "el": "αβγδεζηθικλμνξοπρστυφχψω",
    "zh": "的一是不了人我在有他这中大来上个国到说们为子和你地出道也时年得就那要下以",
    "hi": "कखगघचछजझटठडढणतथदधनपफबभमयरलवशसह",
    "ar": "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
}
#: Test sentences: every training script, mixed scripts, characters the vocabulary lacks (Hebrew, emoji: <unk>),
#: NFKC-normalised forms (ligature, full-width, circled digit), digits and punctuation, odd whitespace.
SENTENCES = [
    "Hello world, this is a test.", "Ça va? Señor Müller dit «bonjour».", "Привет, как дела у тебя сегодня?",
    "Καλημέρα κόσμε, τι κάνεις;", "我们是中国人，你好！", "नमस्ते दुनिया, आप कैसे हैं?", "مرحبا بالعالم، كيف حالك؟",
    "mixed Привет 中国 αβγ नमस्ते عربي", "שלום עולם 🙂 emoji", "ﬁnal ＡＢＣ ① ½ ligatures", "123 4.56 7,890 -- (x) [y]",
    "  leading and  double   spaces  ", "tab\tseparated\tvalues", "", "x",
]


def _lines(alphabet: str, rng: np.random.Generator, n: int = 300) -> list[str]:
    out = []
    for _ in range(n):
        words = ["".join(rng.choice(list(alphabet), size=rng.integers(1, 7))) for _ in range(rng.integers(3, 10))]
        out.append(" ".join(words).capitalize() + ".")
    return out


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Never let transformers reach the hub: every load in this file is from a local directory."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)


def _train_vocab(directory, model_type: str) -> Vocabulary:
    """A 400-piece SentencePiece vocabulary over the six scripts of :data:`ALPHABETS`."""
    rng = np.random.default_rng(0)
    texts = {lang: _lines(alpha, rng) for lang, alpha in ALPHABETS.items()}
    return train_vocabulary(texts, str(directory / "spm"), 400, model_type=model_type, sample_sentences=5000)


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> Vocabulary:
    """The BPE vocabulary (the project's default model type)."""
    return _train_vocab(tmp_path_factory.mktemp("vocab_bpe"), "bpe")


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def any_vocab(request, vocab, tmp_path_factory) -> Vocabulary:
    """Each SentencePiece model type negint_ds trains."""
    return vocab if request.param == "bpe" else _train_vocab(tmp_path_factory.mktemp("vocab_unigram"), "unigram")


def _tiny_model(vocab: Vocabulary, n_langs: int = 2, seed: int = 0, **cfg):
    """A random plain model whose every parameter (LayerNorms, biases, pad row too) is non-trivial, so that a
    mis-mapped weight changes the logits."""
    fields = dict(layers=2, dim=32, heads=4, ffn_dim=128, max_positions=32)
    fields.update(cfg)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(**fields), vocab.size, n_langs, lang_names=[f"l{i}" for i in range(n_langs)])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _batch(vocab: Vocabulary, n_langs: int, L: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids (3, L), lang_ids (3,), key_padding_mask (3, L)): rows of sentences each ended by </s>, the
    second and third right-padded; rows in different languages."""
    rows = []
    for i in range(3):
        ids = [t for s in SENTENCES[3 * i:3 * i + 3] for t in vocab.encode([s])[0] + [3]][:L]
        rows.append(ids[:[L, L // 2, 5][i]])
    ids = torch.zeros(3, L, dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
    pad = torch.arange(L)[None, :] >= torch.tensor([len(r) for r in rows])[:, None]
    return ids, torch.tensor([i % n_langs for i in range(3)]), pad


@pytest.mark.parametrize("case", [dict(), dict(activation="relu", lang_embeddings=False), dict(n_langs=1),
                                  dict(n_langs=3, dropout=0.3, attention_dropout=0.2)])
def test_logits_match_ours(any_vocab, tmp_path, case):
    """XLMWithLMHeadModel.from_pretrained(out) gives our logits at every non-pad position (fp32, eval)."""
    from transformers import XLMWithLMHeadModel

    vocab = any_vocab
    case = dict(case)
    n_langs = case.pop("n_langs", 2)
    model = _tiny_model(vocab, n_langs, **case)
    langs = [f"l{i}" for i in range(n_langs)]
    out = export_model(model, vocab, langs, str(tmp_path / "hf"))
    assert out == str(tmp_path / "hf") and sorted(os.listdir(tmp_path)) == ["hf"]  # no temp sibling left

    hf = XLMWithLMHeadModel.from_pretrained(out).float().eval()
    c = hf.config
    assert (c.n_words, c.emb_dim, c.n_layers, c.n_heads, c.max_position_embeddings) == (vocab.size, 32, 2, 4, 32)
    assert c.gelu_activation == (case.get("activation", "gelu") == "gelu")
    assert c.use_lang_emb == (model.encoder.lang_emb is not None) and c.n_langs == n_langs
    assert (c.pad_index, c.unk_index, c.bos_index, c.eos_index, c.mask_index) == (0, 1, 2, 3, 4)
    assert c.lang2id == {lang: i for i, lang in enumerate(langs)} and not c.causal and not c.asm
    assert c.layer_norm_eps == 1e-12
    assert hf.pred_layer.proj.weight.data_ptr() == hf.transformer.embeddings.weight.data_ptr()  # tied on reload
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["pad_index"] == 0  # transformers 4.x's field

    ids, lang_ids, pad = _batch(vocab, n_langs)
    positions = (~pad).reshape(-1).nonzero(as_tuple=True)[0]
    with torch.no_grad():
        ours = model.logits_at(model.encoder(ids, lang_ids, pad), positions)  # (P, V)
        theirs = hf(input_ids=ids, attention_mask=(~pad).long(),
                    langs=lang_ids[:, None].expand_as(ids)).logits.reshape(-1, vocab.size)[positions]
    diff = (ours - theirs).abs().max().item()
    assert diff <= 1e-4, diff
    assert ours.abs().max() > 1.0  # the comparison is not between two near-zero tensors
    if model.encoder.lang_emb is not None and n_langs > 1:  # the language embedding reaches the logits
        with torch.no_grad():
            other = hf(input_ids=ids, attention_mask=(~pad).long(),
                       langs=(1 - lang_ids.clamp(max=1))[:, None].expand_as(ids)).logits.reshape(-1, vocab.size)
        assert (other[positions] - theirs).abs().max() > 1e-3
    with open(os.path.join(out, ex.EXPORT_INFO)) as f:
        info = json.load(f)
    assert info["vocab_sha256"] == vocab.sha256 and info["languages"] == langs
    assert info["probe_max_abs_logit_diff"] <= 1e-4


def test_tokenizer_matches_vocabulary(any_vocab, tmp_path):
    """AutoTokenizer loads offline; its ids are the raw SentencePiece ids, special tokens at 0..4."""
    from transformers import AutoTokenizer

    vocab = any_vocab
    out = export_model(_tiny_model(vocab), vocab, ["l0", "l1"], str(tmp_path / "hf"))
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.is_fast
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.mask_token_id) == \
        (0, 1, 2, 3, 4)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["<pad>", "<unk>", "<s>", "</s>", "<mask>"]
    ours = vocab.encode(SENTENCES)
    assert any(1 in ids for ids in ours)  # the unknown-script sentence exercises <unk>
    for text, ids in zip(SENTENCES, ours):
        assert tok.encode(text, add_special_tokens=False) == ids, text
    known = next(ids for ids in ours if ids and 1 not in ids)  # decoding differs at <unk> only: "<unk>" vs " ⁇ "
    assert tok.decode(known) == vocab.decode(known)
    # pretraining's format: every sentence ends with </s>; no <s>, no token type ids
    enc = tok(SENTENCES[2])
    assert enc["input_ids"] == ours[2] + [3] and "token_type_ids" not in enc
    assert tok(SENTENCES[0], SENTENCES[1])["input_ids"] == ours[0] + [3] + ours[1] + [3]
    batch = tok([SENTENCES[0], "x"], padding=True, return_tensors="pt")
    assert batch["input_ids"][1, -1] == 0 and batch["attention_mask"][1].sum() == len(ours[-1]) + 1
    assert tok.model_max_length == 32
    assert tok.encode("a <mask> b", add_special_tokens=False).count(4) == 1  # the literal <mask> is the token


@pytest.mark.parametrize("cfg", [dict(language_specific=["ffn"]), dict(language_specific=["ln"]),
                                 dict(language_specific=["attn"]), dict(adapters=AdapterConfig(kind="language")),
                                 dict(adapters=AdapterConfig(kind="shared"))])
def test_non_plain_model_refused(vocab, tmp_path, cfg):
    """A model with φ (per-language sublayers, language adapters) or shared adapters has no HF XLM form."""
    model = _tiny_model(vocab, **cfg)
    with pytest.raises(ExportError, match="only plain models"):
        export_model(model, vocab, ["l0", "l1"], str(tmp_path / "hf"))
    assert os.listdir(tmp_path) == []


def test_unexpressible_model_refused(vocab, tmp_path):
    """HF XLM fixes the FFN at 4·dim and has one LayerNorm eps: anything else is refused, not approximated."""
    with pytest.raises(ExportError, match="ffn_dim=64"):
        export_model(_tiny_model(vocab, ffn_dim=64), vocab, ["l0", "l1"], str(tmp_path / "a"))
    model = _tiny_model(vocab)
    model.encoder.layers[1].ln_ffn.eps = 1e-5
    with pytest.raises(ExportError, match="layer_norm_eps"):
        export_model(model, vocab, ["l0", "l1"], str(tmp_path / "b"))
    with pytest.raises(ExportError, match="languages"):
        export_model(_tiny_model(vocab), vocab, ["l0"], str(tmp_path / "c"))
    assert os.listdir(tmp_path) == []


def test_out_dir_refused_replaced_and_atomic(vocab, tmp_path, monkeypatch):
    """A non-empty out dir is refused unless overwrite; an empty one is used; a failed export leaves no half
    directory and keeps what was there."""
    model = _tiny_model(vocab)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_model(model, vocab, ["l0", "l1"], str(out))
    assert os.listdir(out) == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        export_model(model, vocab, ["l0", "l1"], str(tmp_path / "file"))

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ex.shutil, "copyfile", broken)  # fails after the model and tokenizer are written
    with pytest.raises(OSError, match="disk full"):
        export_model(model, vocab, ["l0", "l1"], str(out), overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        export_model(model, vocab, ["l0", "l1"], str(tmp_path / "new"))
    assert sorted(os.listdir(tmp_path)) == ["file", "hf"] and os.listdir(out) == ["keep.txt"]
    monkeypatch.undo()

    export_model(model, vocab, ["l0", "l1"], str(out), overwrite=True)
    assert "keep.txt" not in os.listdir(out) and "model.safetensors" in os.listdir(out)
    (tmp_path / "empty").mkdir()
    export_model(model, vocab, ["l0", "l1"], str(tmp_path / "empty"))
    assert sorted(os.listdir(tmp_path)) == ["empty", "file", "hf"]


def _fake_run(corpus_dir: str, root, vocab: Vocabulary, model) -> str:
    """A run directory as the trainer leaves it (config.yaml, export/{model.safetensors, model.json, spm.model})
    for ``model``, without training: only what ``load_pretrained`` reads."""
    from safetensors.torch import save_model

    run = root / "run"
    (run / "export").mkdir(parents=True)
    cfg = model.dims.cfg
    r = recipe(corpus_dir, str(root / "no_data"), model={"layers": cfg.layers, "dim": cfg.dim, "heads": cfg.heads,
                                                         "ffn_dim": cfg.ffn_dim, "max_positions": cfg.max_positions})
    (run / "config.yaml").write_text(yaml.safe_dump(r))
    save_model(model, str(run / "export" / "model.safetensors"))
    (run / "export" / "model.json").write_text(json.dumps({"step": 7, "vocab_sha256": vocab.sha256}))
    shutil.copyfile(vocab.path, run / "export" / "spm.model")
    return str(run)


def test_cli_round_trip(vocab, corpus_dir, tmp_path, capsys):
    """``main`` exports a run directory; text → tokenizer → HF model gives the run's own logits; bad input
    exits 2 with ``error: ...`` and writes nothing."""
    from transformers import AutoTokenizer, XLMWithLMHeadModel

    from negint_ds.analysis.pretrained import load_pretrained

    run = _fake_run(corpus_dir, tmp_path, vocab, _tiny_model(vocab))
    out = str(tmp_path / "hf")
    assert main(["--run", run, "--out", out]) == 0
    with open(os.path.join(out, ex.EXPORT_INFO)) as f:
        info = json.load(f)
    assert (info["source_run"], info["step"], info["source"]) == (run, 7, "export")
    assert info["vocab_sha256"] == vocab.sha256 and info["languages"] == ["en", "sw"]

    pre = load_pretrained(run)
    tok = AutoTokenizer.from_pretrained(out)
    hf = XLMWithLMHeadModel.from_pretrained(out).eval()
    sw = hf.config.lang2id["sw"]
    enc = tok(SENTENCES[:4], padding=True, truncation=True, return_tensors="pt")  # at most max_positions = 32
    pad = enc["attention_mask"] == 0
    positions = (~pad).reshape(-1).nonzero(as_tuple=True)[0]
    with torch.no_grad():
        ours = pre.model.logits_at(pre.model.encoder(enc["input_ids"], torch.full((4,), sw), pad), positions)
        theirs = hf(**enc, langs=torch.full_like(enc["input_ids"], sw)).logits.reshape(-1, vocab.size)[positions]
    assert (ours - theirs).abs().max() <= 1e-4

    capsys.readouterr()
    for args, message in [(["--run", run, "--out", out], "not empty"), (["--run", run, "--out", run, "--overwrite"], "holds the run"),
                          (["--run", run, "--out", str(tmp_path), "--overwrite"], "holds the run"),
                          (["--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")], "config.yaml")]:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, err
    assert not os.path.exists(tmp_path / "x")
    assert main(["--run", run, "--out", out, "--overwrite"]) == 0


def test_cli_refuses_real_tiny_run(tiny_run, tmp_path, capsys):
    """The real tiny run (FFN 64 at dim 32, not HF XLM's 4·dim) is refused with exit 2 and nothing written."""
    out = tmp_path / "hf"
    assert main(["--run", tiny_run["run"], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "ffn_dim=64" in err, err
    assert not out.exists() and os.listdir(tmp_path) == []
