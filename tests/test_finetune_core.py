"""Fine-tuning core: encodings, the loss scaling, QA spans, exact resume, φ routing (issue 9)."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from negint_ds.analysis.pretrained import load_pretrained
from negint_ds.data.vocab import EOS_ID
from negint_ds.model import build_model
from negint_ds.tasks.cell import RESULT, STATE, Cell, batch_layout, linear_schedule, run_cell
from negint_ds.tasks.config import FinetuneConfig
from negint_ds.tasks.encode import IGNORE, encode_qa, encode_texts, encode_tokens, pad_batch
from negint_ds.tasks.evaluate import best_span, predict, score_qa, score_tokens
from negint_ds.tasks.examples import QAExample, TaskError, TextExample, TokenExample
from negint_ds.tasks.registry import TaskSpec
from negint_ds.tasks.task_model import TaskModel

LABELS = ("CONS", "VOWEL")
#: First letters labelled VOWEL in the synthetic task: about 3 of each language's 7 syllables start with one.
FIRST = set("ktrmnw")
SPEC = TaskSpec("synthetic", "token", "accuracy", LABELS, ("within", "zero_shot"), 3, (8,), (3e-3,), None,
                data="external", description="first letter of each word in a fixed set or not")


@pytest.fixture(scope="module")
def pre(tiny_run):
    return load_pretrained(tiny_run["run"])


def vowel_examples(pre, lang: str, split: str, n: int) -> list[TokenExample]:
    """A learnable token task on the run's own text: the class of each word's first letter (FIRST or not)."""
    with open(pre.text_path(lang, split), encoding="utf-8") as f:
        lines = [l.split() for l in f.read().splitlines() if l.strip()][:n]
    return [TokenExample(tuple(w), tuple("VOWEL" if x[0].lower() in FIRST else "CONS" for x in w), lang, f"{i}")
            for i, w in enumerate(lines)]


def test_token_rows_label_first_piece_and_cover_every_word_once(pre):
    words = ("Zzkqx", "a", "bbbbbbbbbbbbqqqqqq", "Mo")
    ex = TokenExample(words, ("CONS", "VOWEL", "CONS", "CONS"), "en")  # labels need not follow FIRST here
    pieces = [pre.vocab.encode([w])[0] for w in words]
    rows = encode_tokens([ex], pre.vocab, {"CONS": 0, "VOWEL": 1}, max_len=64)
    assert len(rows) == 1
    r = rows[0]
    assert r.ids.tolist() == [EOS_ID] + [i for p in pieces for i in p] + [EOS_ID]
    want = [IGNORE] + [x for p, lab in zip(pieces, (0, 1, 0, 0)) for x in [lab] + [IGNORE] * (len(p) - 1)] + [IGNORE]
    assert r.labels.tolist() == want
    # a max_len that fits two words at most cuts the sentence into chunks; every word is labelled exactly once
    small = max(len(pieces[0]) + len(pieces[1]), len(pieces[2]), len(pieces[3])) + 2
    rows = encode_tokens([ex], pre.vocab, {"CONS": 0, "VOWEL": 1}, max_len=small)
    assert len(rows) > 1 and all(len(r.ids) <= small for r in rows)
    assert [w for r in rows for w in r.words.tolist()] == [0, 1, 2, 3]
    assert sum(int((r.labels != IGNORE).sum()) for r in rows) == 4


def test_unknown_label_is_a_named_error(pre):
    ex = TokenExample(("a",), ("B-MISC",), "sw", id="f.txt:3")
    with pytest.raises(TaskError, match=r"f\.txt:3 \(sw\): label 'B-MISC' is not in the task's label set"):
        encode_tokens([ex], pre.vocab, {"O": 0}, 16)
    with pytest.raises(TaskError, match="label 'maybe'"):
        encode_texts([TextExample("x", "maybe", "en")], pre.vocab, {"yes": 0, "no": 1}, 16)


def test_pair_truncation_is_longest_first(pre):
    a, b = " ".join(["ka"] * 40), "mo mo"
    la, lb = len(pre.vocab.encode([a])[0]), len(pre.vocab.encode([b])[0])
    (r,) = encode_texts([TextExample(a, "x", "en", text_pair=b)], pre.vocab, {"x": 0}, max_len=20)
    assert len(r.ids) == 20 and la > 20
    seps = np.nonzero(r.ids == EOS_ID)[0].tolist()
    assert seps[0] == 0 and seps[-1] == 19 and len(seps) == 3
    assert seps[2] - seps[1] - 1 == lb, "the short text is kept whole; the long one is cut"


def test_qa_windows_map_back_to_the_answer(pre):
    ctx = " ".join(f"w{i}" for i in range(60)) + " the answer is here " + " ".join(f"v{i}" for i in range(40))
    start = ctx.index("answer is")
    ex = QAExample("q1", "where is it", ctx, (("answer is", start),), "en")
    rows = encode_qa([ex], pre.vocab, max_len=32, doc_stride=8)
    assert len(rows) > 3 and all(len(r.ids) <= 32 for r in rows)
    hits = [r for r in rows if r.labels.tolist() != [0, 0]]
    assert hits, "some window holds the whole answer"
    for r in hits:
        s, e = r.labels.tolist()
        assert ctx[r.offsets[s, 0]:r.offsets[e, 1]].strip() == "answer is"
    # every context character is covered by some window
    covered = np.zeros(len(ctx), bool)
    for r in rows:
        for b, e in r.offsets[r.offsets[:, 0] >= 0]:
            covered[b:e] = True
    assert covered[[i for i, c in enumerate(ctx) if not c.isspace()]].all()
    # the scorer maps a window's predicted span back to text: put all mass on the gold span of one window
    logits = []
    for i, r in enumerate(rows):
        z = np.full((len(r.ids), 2), -5.0, dtype=np.float32)
        if r is hits[0]:
            z[r.labels[0], 0] = z[r.labels[1], 1] = 5.0
        logits.append((i, z))
    got = score_qa([ex], rows, logits, 30)
    assert (got["exact_match"], got["f1"]) == (1.0, 1.0)


def test_best_span_respects_order_length_and_context():
    start = np.array([0.0, 5.0, 1.0, 9.0])
    end = np.array([0.0, 0.0, 4.0, 1.0])
    valid = np.array([False, True, True, True])
    assert best_span(start, end, valid, 30)[1:] == (3, 3)   # 9 + 1 beats 5 + 4 (e ≥ s)
    assert best_span(start, end, valid, 30)[0] == 10.0
    valid[3] = False
    assert best_span(start, end, valid, 30)[1:] == (1, 2)   # 5 + 4
    # one-token spans only: (1,1) = 5 + 0 and (2,2) = 1 + 4 tie; the first in row-major order wins
    assert best_span(start, end, valid, 1)[1:] == (1, 1)
    assert best_span(start, end, np.zeros(4, bool), 30)[0] == float("-inf")


def test_scaled_sum_loss_is_the_global_mean(pre):
    torch.manual_seed(0)
    m = TaskModel(pre.model.encoder, "token", 2, dropout=0.0).eval()
    rows = encode_tokens(vowel_examples(pre, "en", "valid", 6), pre.vocab, {"CONS": 0, "VOWEL": 1}, 32)
    b = pad_batch(rows, "token")
    ids, pad, lab = (torch.from_numpy(b[k]) for k in ("ids", "pad", "labels"))
    lang = torch.zeros(len(rows), dtype=torch.int64)
    z = m.logits(ids, pad, lang)
    want = F.cross_entropy(z.reshape(-1, 2), lab.reshape(-1), ignore_index=IGNORE)
    n = int((lab != IGNORE).sum())
    # two halves on two "ranks": each scaled by W·A/N; the mean over the two is the global mean
    h = len(rows) // 2
    parts = [m(ids[s], pad[s], lang[s], lab[s], torch.tensor(2.0 / n)) for s in (slice(0, h), slice(h, None))]
    torch.testing.assert_close((parts[0] + parts[1]) / 2, want)


def test_batch_layout_and_schedule():
    assert batch_layout(32, 2, None) == (16, 1)
    assert batch_layout(32, 1, 8) == (8, 4)
    with pytest.raises(TaskError, match="batch size 30 cannot be split"):
        batch_layout(30, 4, None)
    f = linear_schedule(100, 0.1)
    assert [f(0), f(9), f(10), f(55), f(100)] == [0.1, 1.0, 1.0, 0.5, 0.0]


def _cell_inputs(pre, lang="en", n_train=48):
    lid = {"CONS": 0, "VOWEL": 1}
    train = encode_tokens(vowel_examples(pre, lang, "train", n_train), pre.vocab, lid, 32)
    dev_ex = vowel_examples(pre, lang, "valid", 24)
    dev_rows = encode_tokens(dev_ex, pre.vocab, lid, 32)
    index = {l: i for i, l in enumerate(pre.lang_ids)}

    def evaluator(examples, rows):
        def run(model, device, phi_lang):
            return score_tokens(examples, rows, predict(model, rows, index, 16, device, phi_lang=phi_lang),
                                list(LABELS), "accuracy")
        return run

    return train, evaluator(dev_ex, dev_rows), {lang: evaluator(dev_ex, dev_rows)}


def _run(pre, cfg, out, train, dev, tests, ds, seed=1):
    cell = Cell("within", "en", ("en",), 8, 3e-3, None, seed)
    return run_cell(pre, SPEC, cfg, cell, 2, train, dev, tests, ds, str(out), {"cell": cell.name})


def test_finetuning_learns_and_resumes_exactly(pre, tiny_run, process_group, tmp_path):
    from negint_ds.config.deepspeed import read_ds_config

    ds = read_ds_config(tiny_run["ds"])
    cfg = FinetuneConfig(task="synthetic", epochs=3, head_dropout=0.1)
    train, dev, tests = _cell_inputs(pre)
    full = _run(pre, cfg, tmp_path / "full", train, dev, tests, ds)
    majority = max(np.mean([l == "VOWEL" for e in vowel_examples(pre, "en", "valid", 24) for l in e.labels]),
                   np.mean([l == "CONS" for e in vowel_examples(pre, "en", "valid", 24) for l in e.labels]))
    assert full["test"]["en"]["accuracy"] > majority + 0.05, (full["test"], majority)
    assert [d["epoch"] for d in full["dev"]] == [1, 2, 3]
    best = max(range(3), key=lambda e: full["dev"][e]["accuracy"])  # the first best epoch is kept
    assert (full["best_epoch"], full["best_dev"]) == (best + 1, full["dev"][best]["accuracy"])
    assert not os.path.isdir(tmp_path / "full" / "checkpoints"), "finished cells keep only best weights and result"

    calls = {"n": 0}

    def dies_in_epoch_2(model, device, phi):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed during epoch 2's dev evaluation")
        return dev(model, device, phi)

    with pytest.raises(KeyboardInterrupt):
        _run(pre, cfg, tmp_path / "cut", train, dies_in_epoch_2, tests, ds)
    state = json.loads((tmp_path / "cut" / STATE).read_text())
    assert state["epochs_done"] == 1 and not (tmp_path / "cut" / RESULT).exists()
    resumed = _run(pre, cfg, tmp_path / "cut", train, dev, tests, ds)
    for k in ("dev", "best_epoch", "best_dev", "test"):
        assert resumed[k] == full[k], k
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "full" / "best.safetensors")), load_file(str(tmp_path / "cut" / "best.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a finished cell is read back, not re-run; with other settings it is refused
    assert _run(pre, cfg, tmp_path / "full", train, dev, tests, ds) == full
    with pytest.raises(TaskError, match="finished cell with other settings"):
        run_cell(pre, SPEC, cfg, Cell("within", "en", ("en",), 8, 3e-3, None, 1), 2, train, dev, tests, ds,
                 str(tmp_path / "full"), {"cell": "other"})


def _phi_pretrained(pre):
    """``pre`` with a language-specific FFN (φ) whose two copies differ."""
    mcfg = dataclasses.replace(pre.cfg.model, language_specific=["ffn"])
    model = build_model(mcfg, pre.vocab.size, len(pre.lang_ids), 0, pre.lang_ids)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return dataclasses.replace(pre, cfg=dataclasses.replace(pre.cfg, model=mcfg), model=model.eval())


def test_zero_shot_predictions_route_phi_by_the_example_language(pre):
    phi = _phi_pretrained(pre)
    sw, en = phi.lang_ids.index("sw"), phi.lang_ids.index("en")
    m = TaskModel(phi.model.encoder, "token", 2, dropout=0.0).eval()
    rows = encode_tokens(vowel_examples(phi, "sw", "valid", 5), phi.vocab, {"CONS": 0, "VOWEL": 1}, 32)
    index = {l: i for i, l in enumerate(phi.lang_ids)}
    got = predict(m, rows, index, 4, torch.device("cpu"))
    src = predict(m, rows, index, 4, torch.device("cpu"), phi_lang=en)
    for (i, z), (_, zs), r in zip(got, src, rows):
        ids = torch.from_numpy(r.ids)[None]
        lang = torch.tensor([sw])
        h_sw = m.head(phi.model.encoder(ids, lang, None, lang=sw))[0].detach().numpy()
        h_en = m.head(phi.model.encoder(ids, lang, None, phi_ids=torch.tensor([en])))[0].detach().numpy()
        np.testing.assert_allclose(z, h_sw, rtol=1e-5, atol=1e-5)   # φ_sw for sw rows
        np.testing.assert_allclose(zs, h_en, rtol=1e-5, atol=1e-5)  # the option: φ_en, sw language embedding
        assert np.abs(z - zs).max() > 1e-3, "φ_sw and φ_en must give different outputs for the test to mean much"


@pytest.mark.parametrize("routing", ["example", "source"])
def test_cell_tests_with_phi_of_the_test_language_unless_asked(pre, tiny_run, process_group, tmp_path, routing):
    from negint_ds.config.deepspeed import read_ds_config

    seen = {}
    train, dev, _ = _cell_inputs(pre, n_train=16)

    def test_sw(model, device, phi_lang):
        seen["phi"] = phi_lang
        return {"accuracy": 0.5}

    cfg = FinetuneConfig(task="synthetic", setting="zero_shot", epochs=1, phi_routing=routing)
    cell = Cell("zero_shot", "en", ("sw",), 8, 1e-3, None, 1)
    run_cell(pre, SPEC, cfg, cell, 2, train, dev, {"sw": test_sw}, read_ds_config(tiny_run["ds"]), str(tmp_path),
             {"cell": cell.name})
    assert seen["phi"] == (None if routing == "example" else pre.lang_ids.index("en"))


def test_a_bf16_cell_trains_in_16_bits_and_keeps_fp32_best_weights(pre, process_group, tmp_path):
    """DeepSpeed bf16 (ZeRO-2; DeepSpeed's CPU accelerator supports bf16): the module runs in bf16, the loss
    stays fp32 and finite, and the saved best weights are fp32."""
    from safetensors.torch import load_file

    from conftest import write_ds_config
    from negint_ds.config.deepspeed import read_ds_config

    ds = read_ds_config(write_ds_config(str(tmp_path / "ds.json"), stage=2, bf16={"enabled": True}))
    train, dev, tests = _cell_inputs(pre, n_train=32)
    res = _run(pre, FinetuneConfig(task="synthetic", epochs=1), tmp_path / "c", train, dev, tests, ds)
    assert res["precision"] == "bf16" and np.isfinite(res["dev"][0]["train_loss"])
    assert 0.0 <= res["test"]["en"]["accuracy"] <= 1.0
    assert all(v.dtype == torch.float32 for v in load_file(str(tmp_path / "c" / "best.safetensors")).values())
