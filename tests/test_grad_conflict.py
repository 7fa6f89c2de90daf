"""Gradient-conflict probe (Fig. 3): cosines against a direct one-big-batch reference, accumulation and rank
sharding, no effect on training (bit-identical model), exact resume of its CSV, and the offline mode."""
import copy
import csv
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import load_export, read_metrics, run_launcher, run_launchers, write_ds_config
from negint_ds.analysis.grad_conflict import (Draw, ProbeBatches, parameter_group, probe, probe_pairs, read_rows,
                                              theta_gradient)
from negint_ds.config import GradConflictConfig, MLMConfig, ModelConfig
from negint_ds.model import build_model
from negint_ds.params import split_parameters

SEQ, MICRO, VOCAB, MASK_ID, N_SPECIAL = 16, 4, 60, 4, 5


def _streams(n_langs=2, n_tokens=600):
    rng = np.random.default_rng(0)
    # each language uses its own half of the vocabulary, so their gradients really differ; sentence ends (</s>,
    # never predicted) make the number of predicted tokens differ between micro-batches
    out = []
    for i in range(n_langs):
        tokens = rng.integers(N_SPECIAL + i * 25, N_SPECIAL + (i + 1) * 25, size=n_tokens)
        tokens[rng.random(n_tokens) < 0.25] = 3
        out.append(SimpleNamespace(path=f"lang{i}.bin", num_tokens=n_tokens, tokens=tokens))
    return out


def _model(**model_kw):
    torch.manual_seed(0)
    cfg = ModelConfig(layers=2, dim=16, heads=2, ffn_dim=32, max_positions=SEQ, dropout=0.1, attention_dropout=0.1,
                      **model_kw)
    return build_model(cfg, VOCAB, 2, 0, ["en", "sw"])


def _batches(micro=MICRO):
    return ProbeBatches(_streams(), SEQ, micro, MLMConfig(), VOCAB, MASK_ID, N_SPECIAL, seed=3)


def _reference_grad(model, split, batches: list, lang: int) -> torch.Tensor:
    """∇θ of the mean loss of ONE batch holding every micro-batch's windows (plain autograd, eval mode)."""
    m = copy.deepcopy(model).eval()
    ids = torch.cat([b.input_ids for b in batches])
    pos = torch.cat([b.pred_positions + k * b.input_ids.numel() for k, b in enumerate(batches)])
    tgt = torch.cat([b.targets for b in batches])
    for p in m.parameters():
        p.requires_grad_(True)
    loss = m(ids, torch.full((ids.shape[0],), lang), pos, tgt, lang=lang)
    loss.backward()
    params = dict(m.named_parameters())
    return torch.cat([params[n].grad.reshape(-1) for n in split.theta])


@pytest.mark.parametrize("model_kw", [{}, {"adapters": {"kind": "language"}}, {"language_specific": ["ffn"]}],
                         ids=["plain", "lang_adapters", "lang_ffn"])
def test_cosines_match_a_one_big_batch_reference(model_kw):
    """The probe's whole-θ and per-group cosines equal those of gradients taken over one big batch of the same
    masked windows (so accumulating micro-batches == one batch), with φ excluded and each draw in its language."""
    from negint_ds.config.loader import from_mapping

    cfg_model = from_mapping(ModelConfig, {"layers": 2, "dim": 16, "heads": 2, "ffn_dim": 32, "max_positions": SEQ,
                                           **model_kw})
    torch.manual_seed(0)
    model = build_model(cfg_model, VOCAB, 2, 0, ["en", "sw"])
    split = split_parameters(model, 2)
    cfg = GradConflictConfig(enabled=True, sequences=12, controls=["en"])
    pb = _batches()
    theta = {n: p.detach() for n, p in split.theta.items()}
    rows = probe(model, theta, {}, pb, 7, ["en", "sw"], cfg, torch.device("cpu"))
    draws, pairs = probe_pairs(["en", "sw"], ["en"])
    ref = {d: _reference_grad(model, split, pb.micro_batches(7, d, 12, 0, 1), d.lang) for d in draws}
    names = list(split.theta)
    sizes = [split.theta[n].numel() for n in names]
    for label, _, a, b in pairs:
        got = {r["group"]: r["cosine"] for r in rows if r["pair"] == label}
        want = torch.nn.functional.cosine_similarity(ref[a].double(), ref[b].double(), dim=0).item()
        assert got["all"] == pytest.approx(want, rel=1e-5, abs=1e-6), label
        for group in ("embeddings", "layer1.ffn", "layer0.attn"):
            mask = torch.cat([torch.full((s,), parameter_group(n) == group) for n, s in zip(names, sizes)])
            if not mask.any():  # a language-specific FFN has no θ part
                assert group not in got
                continue
            w = torch.nn.functional.cosine_similarity(ref[a][mask].double(), ref[b][mask].double(), dim=0).item()
            assert got[group] == pytest.approx(w, rel=1e-5, abs=1e-6), (label, group)
    assert {r["pair"] for r in rows} == {"en-sw", "en-en"}
    assert not any("adapter" in r["group"] for r in rows) or model_kw.get("adapters", {}).get("kind") == "shared"
    assert not any(".per_lang." in n for n in names)


def test_gradient_is_independent_of_micro_batching_and_rank_sharding():
    """Micro-batches 2 vs 4 (the same windows, masked per micro-batch differently) are different effective
    batches, but the same micro-batches split over 2 ranks give exactly the set world=1 sees; and the gradient
    over an effective batch equals the token-weighted mean of its micro-batch gradients."""
    pb = _batches()
    d = Draw(1, 0)
    one = pb.micro_batches(5, d, 12, 0, 1)
    r0, r1 = pb.micro_batches(5, d, 12, 0, 2), pb.micro_batches(5, d, 12, 1, 2)
    merged = [None] * len(one)
    merged[0::2], merged[1::2] = r0, r1
    assert all(torch.equal(a.input_ids, b.input_ids) and torch.equal(a.targets, b.targets) for a, b in zip(one, merged))
    # the control's second draw is an independent batch (other windows), not the first one masked again
    other = pb.micro_batches(5, Draw(1, 1), 12, 0, 1)
    same = torch.cat([(a.input_ids == b.input_ids).float().reshape(-1) for a, b in zip(one, other)]).mean().item()
    assert same < 0.5, f"draws 0 and 1 share {same:.0%} of their tokens"
    model = _model()
    split = split_parameters(model, 2)
    theta = {n: p.detach() for n, p in split.theta.items()}
    model.eval()
    g_all, n_all = theta_gradient(model, theta, {}, one, 1, torch.device("cpu"))
    parts = [theta_gradient(model, theta, {}, [b], 1, torch.device("cpu")) for b in one]
    assert n_all == sum(n for _, n in parts)
    for k in range(len(g_all)):
        want = sum(g[k] * n for g, n in parts) / n_all
        torch.testing.assert_close(g_all[k], want, rtol=1e-5, atol=1e-7)


def test_probe_leaves_model_rng_and_grads_untouched():
    model = _model()
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    split = split_parameters(model, 2)
    theta = {n: p.detach() for n, p in split.theta.items()}
    torch.manual_seed(11)
    state = torch.get_rng_state()
    for dropout in (False, True):
        probe(model, theta, {}, _batches(), 0, ["en", "sw"], GradConflictConfig(enabled=True, sequences=8, dropout=dropout),
              torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), state)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_dropout_option_changes_the_gradient_but_is_seeded():
    model = _model()
    split = split_parameters(model, 2)
    theta = {n: p.detach() for n, p in split.theta.items()}

    def run(dropout):
        cfg = GradConflictConfig(enabled=True, sequences=8, dropout=dropout)
        return [r["cosine"] for r in probe(model, theta, {}, _batches(), 0, ["en", "sw"], cfg, torch.device("cpu"))]

    assert run(True) == run(True)
    assert run(True) != run(False)


def test_every_parameter_of_every_model_row_has_a_group():
    for kw in ({}, {"adapters": {"kind": "shared"}}, {"adapters": {"kind": "language"}}, {"language_specific": ["ln"]}):
        from negint_ds.config.loader import from_mapping

        cfg = from_mapping(ModelConfig, {"layers": 2, "dim": 16, "heads": 2, "ffn_dim": 32, **kw})
        split = split_parameters(build_model(cfg, VOCAB, 2, 0), 2)
        groups = {parameter_group(n) for n in split.theta}
        assert {"embeddings", "layer0.attn", "layer1.ffn"} <= groups
        assert ("layer0.adapter" in groups) == (kw.get("adapters", {}).get("kind") == "shared")
    with pytest.raises(ValueError, match="no gradient-conflict group"):
        parameter_group("encoder.new_thing.weight")


# ------------------------------------------------------------------------------------ through the launcher
GC = ["--set", "analysis.grad_conflict.enabled=true", "--set", "analysis.grad_conflict.every=5",
      "--set", "analysis.grad_conflict.sequences=8"]
ADPT = ["--set", "model.adapters.kind=language"]


@pytest.fixture(scope="module")
def ds2(tmp_path_factory):
    return write_ds_config(str(tmp_path_factory.mktemp("gc_ds") / "zero2.json"), stage=2)


@pytest.fixture(scope="module")
def runs(tiny_data, ds2, tmp_path_factory):
    """The same language-adapter run with the probe off and on (dropout on in training)."""
    d = tmp_path_factory.mktemp("gc_runs")
    common = ["--deepspeed_config", ds2, "--config", tiny_data["recipe"], "--set", "train.max_steps=10",
              "--set", "train.save_every=5", "--set", "train.keep_checkpoints=3", *ADPT]
    out = {name: str(d / name) for name in ("off", "on")}
    for name, p in zip(out.copy(), run_launchers([common + ["--run_dir", out["off"]],
                                                   common + ["--run_dir", out["on"], *GC]])):
        assert p.returncode == 0, (name, p.stderr[-3000:])
        out[name + "_log"] = p.stderr
    return out


def test_training_is_bit_identical_with_the_probe_on(runs):
    a, b = load_export(runs["off"]), load_export(runs["on"])
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "the probe changed training"
    assert [r["loss"] for r in read_metrics(runs["off"], "train")] == [r["loss"] for r in read_metrics(runs["on"], "train")]
    assert not os.path.exists(os.path.join(runs["off"], "analysis"))


def test_probe_writes_rows_figure_and_cost(runs):
    rows = read_rows(os.path.join(runs["on"], "analysis", "grad_conflict.csv"))
    assert sorted({r["step"] for r in rows}) == [0, 5, 10]
    assert {r["pair"] for r in rows} == {"en-sw", "en-en", "sw-sw"}
    assert {r["kind"] for r in rows if r["pair"] == "en-sw"} == {"pair"}
    groups = {r["group"] for r in rows}
    assert {"all", "embeddings", "layer0.attn", "layer0.ffn", "layer1.attn", "layer1.ffn"} <= groups
    assert not any("adapter" in g for g in groups), "language adapters are φ: excluded"
    assert all(-1.0 <= r["cosine"] <= 1.0 for r in rows)
    for f in ("grad_conflict.png", "grad_conflict_groups.png", "grad_conflict_cost.json"):
        assert os.path.isfile(os.path.join(runs["on"], "analysis", f)), f
    assert "θ-gradient cosine" in runs["on_log"]


def test_resume_reproduces_the_probe_rows(runs, tiny_data, ds2, tmp_path):
    part = str(tmp_path / "part")
    common = ["--deepspeed_config", ds2, "--config", tiny_data["recipe"], "--set", "train.save_every=5", *ADPT, *GC]
    assert run_launcher(common + ["--run_dir", part, "--set", "train.max_steps=5"]).returncode == 0
    # a probe row past the checkpoint (as if killed after probing step 10 but before saving it) is dropped
    path = os.path.join(part, "analysis", "grad_conflict.csv")
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow([10, 0.0, "en-sw", "pair", "all", 0.5, 8])
    p = run_launcher(["--run_dir", part, "--resume", "--set", "train.max_steps=10"])
    assert p.returncode == 0, p.stderr[-2000:]
    full = read_rows(os.path.join(runs["on"], "analysis", "grad_conflict.csv"))
    assert read_rows(path) == full


def test_offline_mode_reproduces_the_online_probe(runs):
    from negint_ds.analysis.grad_conflict_offline import offline_grad_conflict

    cfg = GradConflictConfig(sequences=8)
    rows = offline_grad_conflict(runs["on"], cfg, progress=False)
    online = read_rows(os.path.join(runs["on"], "analysis", "grad_conflict.csv"))
    for step in (5, 10):
        got = {(r["pair"], r["group"]): r["cosine"] for r in rows if r["step"] == step}
        want = {(r["pair"], r["group"]): r["cosine"] for r in online if r["step"] == step}
        assert got.keys() == want.keys()
        assert all(got[k] == pytest.approx(want[k], abs=1e-6) for k in want), step
    assert os.path.isfile(os.path.join(runs["on"], "analysis", "grad_conflict_offline.png"))
    again = offline_grad_conflict(runs["on"], cfg, progress=False)  # finished checkpoints are skipped
    assert len(again) == len(rows)


def test_bad_probe_settings_are_refused_before_anything_is_written(tiny_data, ds2, tmp_path, cli):
    from negint_ds.train.cli import main

    run = str(tmp_path / "bad")
    code, _, err = cli(main, ["--deepspeed_config", ds2, "--config", tiny_data["recipe"], "--run_dir", run, *GC,
                              "--set", "analysis.grad_conflict.controls=[fr]",
                              "--set", "analysis.grad_conflict.micro_batch=3"])
    assert code == 2
    assert "analysis.grad_conflict.controls: 'fr'" in err and "multiple of micro_batch=3" in err
    assert not os.path.exists(run)
    ds3 = write_ds_config(str(tmp_path / "z3.json"), stage=3)
    code, _, err = cli(main, ["--deepspeed_config", ds3, "--config", tiny_data["recipe"], "--run_dir", run, *GC])
    assert code == 2 and "analysis.grad_conflict reads θ whole" in err
    assert not os.path.exists(run)
