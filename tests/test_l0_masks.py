"""Per-language L0 masks (Wang et al. 2020 Eq. 1, Fig. 4): groups, objective, a toy with a known answer, DeepSpeed
training on a tiny pretrained run, the similarity report, and refusals."""
import copy
import csv
import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.func import functional_call

from conftest import child_env, free_port, write_ds_config
from negint_ds.analysis import hard_concrete as hc
from negint_ds.analysis.mask_similarity import (cosine, load_mask, normalise, similarity_rows, top_groups,
                                                write_mask_report)
from negint_ds.analysis.masks import (GatedObjective, GateGroup, LanguageMicroBatches, MaskConfig, build_groups,
                                      fit_gates, mask_ds_config, masked_weight, mlm_objective, train_language_mask)
from negint_ds.analysis.pretrained import AnalysisError, load_pretrained
from negint_ds.config import MLMConfig, ModelConfig
from negint_ds.mlm import MLMBatch, mask_tokens
from negint_ds.model import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ModelConfig(layers=2, dim=16, heads=4, ffn_dim=24, dropout=0.1, attention_dropout=0.1, max_positions=16)
V = 40


@pytest.fixture(scope="module", autouse=True)
def _group(process_group):
    """In-process DeepSpeed engines need the session's 1-process gloo group (conftest.py). One intra-op thread:
    these tensors are tiny, and on a small shared machine a second thread spinning against another process
    makes each matmul ~500× slower (8 ms instead of 13 µs, seen on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_model(cfg=SMALL, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg, V, 2, 0, ["en", "sw"]).double().eval()


def small_batch(seed=0, lang=1, rows=3, length=12):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, V, (rows, length), generator=g)
    ids, pos, tgt = mask_tokens(tokens, MLMConfig(mask_prob=0.3), V, 4, 5, g)
    return MLMBatch(ids, torch.full((rows,), lang, dtype=torch.int64), pos, tgt)


def loss_of(model, batch, lang=1):
    return model(batch.input_ids, batch.lang_ids, batch.pred_positions, batch.targets, lang=lang)


# ----------------------------------------------------------------------------------------------- groups
def test_structured_and_matrix_groups_cover_heads_neurons_and_matrices():
    m = small_model()
    g = {x.name: x for x in build_groups(m, "structured")}
    assert list(g) == ["layer0.attn", "layer0.ffn", "layer1.attn", "layer1.ffn"]
    assert (g["layer1.attn"].param, g["layer1.attn"].n_gates, g["layer1.attn"].block) == \
        ("encoder.layers.1.attn.out.weight", 4, 4)
    assert g["layer1.attn"].numel_per_gate == 16 * 4  # D × D_h columns of out.weight per head
    assert (g["layer0.ffn"].param, g["layer0.ffn"].n_gates, g["layer0.ffn"].numel_per_gate) == \
        ("encoder.layers.0.ffn.lin2.weight", 24, 16)
    mat = build_groups(m, "matrix")
    assert [x.name for x in mat[:4]] == ["layer0.attn.qkv", "layer0.attn.out", "layer0.ffn.lin1", "layer0.ffn.lin2"]
    assert all(x.n_gates == 1 and x.dim is None for x in mat)
    assert mat[0].numel_per_gate == 48 * 16 and (mat[0].layer, mat[0].component) == (0, "attn")


def reference_attention(attn, pruned_head):
    """Multi-head attention written head by head (no dropout), head ``pruned_head``'s output replaced by zeros."""

    def forward(x, key_padding_mask=None):
        B, L, d = x.shape
        H, Dh = attn.heads, attn.head_dim
        Wqkv, bqkv = attn.qkv.weight, attn.qkv.bias
        out = attn.out.bias.expand(B, L, d).clone()
        for h in range(H):
            rows = [t * d + h * Dh + j for t in range(3) for j in range(Dh)]  # q, k, v rows of head h
            q, k, v = (x @ Wqkv[rows].T + bqkv[rows]).split(Dh, dim=-1)
            scores = q @ k.transpose(1, 2) / math.sqrt(Dh)
            if key_padding_mask is not None:
                scores = scores.masked_fill(key_padding_mask[:, None, :], float("-inf"))
            head = torch.softmax(scores, dim=-1) @ v  # (B, L, Dh): head h's output
            if h == pruned_head:
                head = torch.zeros_like(head)
            out = out + head @ attn.out.weight[:, h * Dh:(h + 1) * Dh].T
        return out

    return forward


@pytest.mark.parametrize("head", [0, 2])
def test_masking_a_head_equals_zeroing_its_output_by_hand(head):
    m = small_model()
    b = small_batch()
    ref = copy.deepcopy(m)
    ref.encoder.layers[1].attn.forward = reference_attention(ref.encoder.layers[1].attn, pruned_head=None)
    assert torch.allclose(loss_of(ref, b), loss_of(m, b), rtol=1e-12, atol=0), "the reference itself is wrong"
    ref.encoder.layers[1].attn.forward = reference_attention(ref.encoder.layers[1].attn, pruned_head=head)
    group = build_groups(m, "structured")[2]
    z = torch.ones(4, dtype=torch.float64)
    z[head] = 0.0
    w = m.get_parameter(group.param)
    got = functional_call(m, {group.param: masked_weight(w, z, group)},
                          (b.input_ids, b.lang_ids, b.pred_positions, b.targets), {"lang": 1})
    want = loss_of(ref, b)
    assert torch.allclose(got, want, rtol=1e-12, atol=0)
    assert not torch.allclose(got, loss_of(m, b), rtol=1e-6, atol=0), "pruning a head must change the loss"


def test_masking_a_neuron_equals_zeroing_its_activation():
    m = small_model()
    b = small_batch(seed=1)
    ref = copy.deepcopy(m)
    ref.encoder.layers[0].ffn.act.register_forward_hook(lambda mod, inp, out: out.index_fill(-1, torch.tensor([5]), 0))
    group = build_groups(m, "structured")[1]
    z = torch.ones(24, dtype=torch.float64)
    z[5] = 0.0
    got = functional_call(m, {group.param: masked_weight(m.get_parameter(group.param), z, group)},
                          (b.input_ids, b.lang_ids, b.pred_positions, b.targets), {"lang": 1})
    assert torch.allclose(got, loss_of(ref, b), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", ["structured", "matrix"])
def test_all_ones_masks_reproduce_the_unmasked_loss_exactly(kind):
    m = small_model()
    m_before = {k: v.clone() for k, v in m.state_dict().items()}
    b = small_batch(seed=2)
    obj = GatedObjective(m, build_groups(m, kind), mlm_objective(1), lambda_l0=0.0)
    with torch.no_grad():
        for gate in obj.gates:
            gate.log_alpha.fill_(10.0)  # deterministic mask exactly 1
    obj.eval()
    assert all(torch.equal(z, torch.ones_like(z)) for z in obj.masks())
    assert torch.equal(obj(b), loss_of(m, b))
    obj.train()  # gates sample, but the frozen base stays in eval mode (no dropout): still deterministic per seed
    assert not obj.base.training and obj.gates.training
    assert torch.equal(obj(b, noise_seed=3), obj(b, noise_seed=3))
    assert all(torch.equal(v, m_before[k]) for k, v in m.state_dict().items())


def test_objective_is_task_loss_plus_lambda_times_normalised_expected_l0():
    """The value of Eq. 1: a sign flip or a lost λ on the L0 term is caught here directly."""
    m = small_model()
    groups = build_groups(m, "structured")
    obj = GatedObjective(m, groups, mlm_objective(1), lambda_l0=0.7)
    with torch.no_grad():
        for i, gate in enumerate(obj.gates):
            gate.log_alpha.copy_(torch.linspace(-3, 3, gate.n) + i)
    b = small_batch(seed=4)
    total = obj(b, noise_seed=11)
    z = obj.masks(11)
    task = functional_call(m, {g.param: masked_weight(m.get_parameter(g.param), zz, g) for g, zz in zip(groups, z)},
                           (b.input_ids, b.lang_ids, b.pred_positions, b.targets), {"lang": 1})
    kept = sum(g.numel_per_gate * hc.expected_l0(gate.log_alpha.detach().double()).sum().item()
               for g, gate in zip(groups, obj.gates))
    l0 = kept / sum(g.numel_per_gate * g.n_gates for g in groups)
    assert float(obj.last_terms["l0"]) == pytest.approx(l0, rel=1e-6) and 0.3 < l0 < 0.9
    # the L0 term is computed in the gates' fp32: agreement to 1e-6 (its size here is 0.7·l0 ≈ 0.4)
    assert total.item() == pytest.approx(task.item() + 0.7 * l0, abs=1e-6)
    total.backward()
    assert all(gate.log_alpha.grad is not None and gate.log_alpha.grad.abs().sum() > 0 for gate in obj.gates)
    assert all(p.grad is None for p in m.parameters()), "the frozen base must get no gradient"


# ----------------------------------------------------------------------------------------------- the toy
class Toy(nn.Module):
    """Three blocks of K input features, one gate per block of ``proj.weight``'s columns."""

    K, OUT = 4, 8

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.proj = nn.Linear(3 * self.K, self.OUT, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(self.OUT, 3 * self.K, generator=g) / math.sqrt(self.K))

    def forward(self, x):
        return self.proj(x)


def toy_loss(base, overrides, data):
    x, y = data
    return ((functional_call(base, overrides, (x,)) - y) ** 2).mean()


def toy_data(lang):
    """Language A never feeds block 2 (its features are 0): block 2 is useless for A. For B every block carries
    signal and the targets are the full model's outputs, so every block is essential."""

    def batches(step):
        g = torch.Generator().manual_seed(1000 * (lang == "B") + step)
        x = torch.randn(64, 3 * Toy.K, generator=g)
        if lang == "A":
            x[:, 2 * Toy.K:] = 0.0
        with torch.no_grad():
            y = x @ TOY_W.T
        return [((x, y), step)]

    return batches


TOY_W = Toy().proj.weight.detach().clone()


def fit_toy(lang, lambda_l0=0.3, stage=2, steps=80):
    base = Toy()
    group = GateGroup("layer0.ffn", "proj.weight", n_gates=3, dim=1, block=Toy.K, numel_per_gate=Toy.OUT * Toy.K)
    obj = GatedObjective(base, [group], toy_loss, lambda_l0, init_drop_rate=0.1,
                         generator=torch.Generator().manual_seed(0))
    cfg = MaskConfig(steps=steps, lr=0.1, lambda_l0=lambda_l0, sequences_per_step=1, micro_batch=1, log_every=40)
    ds = mask_ds_config({"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage},
                         "optimizer": {"type": "AdamW", "params": {"torch_adam": True}}}, cfg, world=1)
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=obj, model_parameters=obj.gate_parameters(), config=ds)
    history = fit_gates(engine, toy_data(lang), steps, log_every=40)
    pi = obj.log_alpha()["layer0.ffn"]  # before destroy(): under ZeRO 1-2 the gates live in DeepSpeed's flat buffer
    engine.destroy()
    assert torch.equal(base.proj.weight, TOY_W), "fitting must not touch the frozen weights"
    return pi, history


@pytest.mark.parametrize("stage", [0, 2])
def test_toy_masks_find_the_group_one_language_does_not_need(stage):
    pi_a, hist_a = fit_toy("A", stage=stage)
    pi_b, _ = fit_toy("B", stage=stage)
    z_a, z_b = hc.deterministic_mask(pi_a), hc.deterministic_mask(pi_b)
    assert float(z_a[2]) == 0.0, f"A should prune block 2 (π_A = {pi_a.tolist()})"
    assert (z_a[:2] > 0.5).all(), f"A must keep its essential blocks (π_A = {pi_a.tolist()})"
    assert (z_b > 0.5).all(), f"B must keep every block (π_B = {pi_b.tolist()})"
    assert float(pi_a[2]) < 0 < float(pi_b[2])
    assert hist_a[-1]["l0"] < hist_a[0]["l0"] and [r["step"] for r in hist_a] == [40, 80]
    assert hist_a[-1]["objective"] == pytest.approx(hist_a[-1]["task"] + 0.3 * hist_a[-1]["l0"], rel=1e-5)


def test_toy_without_l0_pressure_prunes_nothing():
    pi_a, _ = fit_toy("A", lambda_l0=0.0, stage=0, steps=60)
    assert (hc.deterministic_mask(pi_a) > 0.5).all(), "with λ = 0 nothing pays for pruning block 2"


# ----------------------------------------------------------------------------------------------- batches
def test_micro_batches_do_not_depend_on_world_size():
    tokens = torch.randint(5, V, (500,), generator=torch.Generator().manual_seed(0)).numpy()
    common = dict(tokens=tokens, lang="sw", lang_index=1, seq_len=12, micro=2, mlm=MLMConfig(), vocab_size=V,
                  mask_id=4, seed=3, device=torch.device("cpu"))
    one = LanguageMicroBatches(accum=2, world=1, rank=0, **common)
    ranks = [LanguageMicroBatches(accum=1, world=2, rank=r, **common) for r in (0, 1)]
    for step in (0, 5):
        a = one(step)
        b = ranks[0](step) + ranks[1](step)
        for (x, sx), (y, sy) in zip(a, b):
            assert sx == sy and all(torch.equal(getattr(x, f), getattr(y, f)) for f in
                                    ("input_ids", "lang_ids", "pred_positions", "targets"))
    assert not torch.equal(one(0)[0][0].input_ids, one(1)[0][0].input_ids)
    cfg = MaskConfig(sequences_per_step=8, micro_batch=2)
    ds = mask_ds_config({"train_micro_batch_size_per_gpu": 32, "optimizer": {"type": "AdamW", "params": {"lr": 1,
                         "weight_decay": 0.01}}, "scheduler": {"type": "WarmupLR"}}, cfg, world=2)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (8, 2, 2)
    assert ds["optimizer"]["params"] == {"lr": cfg.lr, "weight_decay": 0.0} and "scheduler" not in ds
    for world in (1, 4):  # the layout is the config's, not the DeepSpeed file's: the same global micro-batches
        ds = mask_ds_config({"train_micro_batch_size_per_gpu": 32}, cfg, world=world)
        assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (2, 4 // world)
    with pytest.raises(AnalysisError, match="cannot be shared out over 3 ranks"):
        mask_ds_config({"train_micro_batch_size_per_gpu": 2}, cfg, world=3)
    assert "sequences_per_step: 8 is not a multiple of micro_batch=3" in MaskConfig(micro_batch=3,
                                                                                  sequences_per_step=8).validate()


# ----------------------------------------------------------------------------------------------- the tiny run
# lr 0.3: Adam moves π by ≲ 0.3 per step, so 16 steps can take a gate from its start (log 9 ≈ 2.2) past the
# deterministic mask's zero (−log 11 ≈ −2.4).
MASK_CFG = MaskConfig(steps=16, lr=0.3, lambda_l0=1.0, sequences_per_step=8, micro_batch=4, log_every=8)


@pytest.fixture(scope="module")
def pretrained_run(tiny_data, tmp_path_factory):
    """A tiny finished pretraining run (30 steps, in-process DeepSpeed)."""
    from negint_ds.train.setup import RunArgs, prepare_run
    from negint_ds.train.trainer import Trainer

    d = tmp_path_factory.mktemp("l0_pre")
    ds = write_ds_config(str(d / "ds.json"), stage=2)
    args = RunArgs(run_dir=str(d / "run"), config=tiny_data["recipe"], deepspeed_config=ds, progress=False,
                   overrides=["train.max_steps=30", "train.eval_every=30", "train.save_every=30"])
    Trainer(prepare_run(args, 1), rank=0, world_size=1, resume=False, overwrite=False, progress=False).train()
    return str(d / "run")


@pytest.fixture(scope="module")
def mask_runs(pretrained_run, tmp_path_factory):
    """sw seed 0, en seed 0, en seed 1 on the tiny run; micro-batch 4 so each step accumulates 2 micro-batches."""
    import deepspeed

    out = str(tmp_path_factory.mktemp("l0_masks"))
    ds = json.load(open(write_ds_config(os.path.join(out, "..", "mask_ds.json"), stage=2, micro=4)))
    pre = load_pretrained(pretrained_run)
    before = {k: v.clone() for k, v in pre.model.state_dict().items()}
    seen = {}
    real = deepspeed.initialize

    def spy(**kw):
        seen.setdefault("objectives", []).append(kw["model"])
        engine = real(**kw)
        seen.setdefault("optim_numel", []).append(sum(p.numel() for g in engine[1].param_groups for p in g["params"]))
        return engine

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(deepspeed, "initialize", spy)
        summaries = {f"{lang}_seed{seed}": train_language_mask(pre, lang, seed, MASK_CFG, ds, out, progress=False)
                     for lang, seed in (("sw", 0), ("en", 0), ("en", 1))}
    return {"out": out, "pre": pre, "before": before, "summaries": summaries, "seen": seen, "ds": ds}


def test_mask_run_writes_its_files_and_learns_only_the_gates(mask_runs, pretrained_run):
    from safetensors.torch import load_file

    out, pre = mask_runs["out"], mask_runs["pre"]
    for name, s in mask_runs["summaries"].items():
        d = os.path.join(out, name)
        assert sorted(os.listdir(d)) == ["log_alpha.safetensors", "summary.json"]
        assert json.load(open(os.path.join(d, "summary.json"))) == json.loads(json.dumps(s))
        pi = load_mask(d)
        assert {k: tuple(v.shape) for k, v in pi.items()} == {"layer0.attn": (2,), "layer0.ffn": (64,),
                                                              "layer1.attn": (2,), "layer1.ffn": (64,)}
        assert s["n_gates"] == 132 and s["steps_done"] == 16 and s["groups"] == "structured"
        # the gates moved well away from their N(log 9, 0.01²) start
        assert max(float((v - math.log(9.0)).abs().max()) for v in pi.values()) > 0.5
        zhat = {k: hc.deterministic_mask(v) for k, v in pi.items()}
        assert s["sparsity"] == pytest.approx(sum(int((z == 0).sum()) for z in zhat.values()) / 132)
        # at the start E[L0] ≈ 0.978; with λ = 0 it ends ≈ 0.965 (seen), with λ = 1 at 0.72–0.79
        assert s["expected_l0"] < 0.9, "L0 pressure did nothing"
        assert s["sparsity"] > 0, "λ = 1 should prune some gates of the tiny model"
        assert [r["step"] for r in s["history"]] == [8, 16]
    # The unmasked validation loss is the pretraining run's own (same windows, same MLM corruption).
    final = json.load(open(os.path.join(pretrained_run, "final_ppl.json")))["valid"]
    for name, s in mask_runs["summaries"].items():
        lang = name.split("_")[0]
        assert s["valid_loss_unmasked"] == pytest.approx(final[lang]["loss"], rel=1e-9)
        assert s["valid_loss_masked"] != s["valid_loss_unmasked"] and s["valid_tokens"] == final[lang]["tokens"]
    # Only the gates learn: DeepSpeed's optimiser held the 132 gates; the base weights are bit-identical (the
    # caller's model, the copy DeepSpeed trained with, and the exported file).
    assert mask_runs["seen"]["optim_numel"] == [132, 132, 132]
    export = load_file(os.path.join(pretrained_run, "export", "model.safetensors"))
    for obj in mask_runs["seen"]["objectives"]:
        for k, v in obj.base.state_dict().items():
            assert torch.equal(v, mask_runs["before"][k]), k
    for k, v in pre.model.state_dict().items():
        assert torch.equal(v, mask_runs["before"][k]) and (k not in export or torch.equal(v, export[k])), k
    assert all(p.requires_grad for p in pre.model.parameters()), "the caller's model was frozen in place"
    # seeds matter: en seed 0 and 1 differ, but only a little
    a, b = load_mask(os.path.join(out, "en_seed0")), load_mask(os.path.join(out, "en_seed1"))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_rerun_skips_and_conflicting_or_partial_directories_are_refused(mask_runs, monkeypatch, tmp_path):
    import deepspeed

    out, pre, ds = mask_runs["out"], mask_runs["pre"], mask_runs["ds"]
    d = os.path.join(out, "sw_seed0")
    mtimes = {f: os.path.getmtime(os.path.join(d, f)) for f in os.listdir(d)}
    monkeypatch.setattr(deepspeed, "initialize", lambda **kw: pytest.fail("a finished run must not train again"))
    again = train_language_mask(pre, "sw", 0, MASK_CFG, ds, out, progress=False)
    assert again == json.load(open(os.path.join(d, "summary.json")))
    # how often the history is logged does not change the masks: still the same run
    assert train_language_mask(pre, "sw", 0, dataclasses.replace(MASK_CFG, log_every=1), ds, out,
                               progress=False) == again
    assert mtimes == {f: os.path.getmtime(os.path.join(d, f)) for f in os.listdir(d)}
    with pytest.raises(AnalysisError, match="other settings.*lambda_l0"):
        train_language_mask(pre, "sw", 0, dataclasses.replace(MASK_CFG, lambda_l0=2.0), ds, out, progress=False)
    partial = tmp_path / "partial" / "sw_seed0"
    partial.mkdir(parents=True)
    (partial / "log_alpha.safetensors").write_bytes(b"half")
    with pytest.raises(AnalysisError, match="unfinished mask run.*delete the directory"):
        train_language_mask(pre, "sw", 0, MASK_CFG, ds, str(tmp_path / "partial"), progress=False)
    assert (partial / "log_alpha.safetensors").read_bytes() == b"half"


def test_mask_report_writes_fig4_tables_and_plots(mask_runs, tmp_path):
    out = mask_runs["out"]
    written = write_mask_report(out, [("sw_seed0", "en_seed0"), "en_seed0:en_seed1"], str(tmp_path / "report"))
    names = sorted(os.path.basename(p) for p in written)
    assert names == ["mask_similarity.csv", "mask_similarity.png", "mask_top_sw.csv", "mask_top_sw.png"]
    for p in written:
        assert os.path.getsize(p) > 0
        if p.endswith(".png"):
            assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    pis = {n: load_mask(os.path.join(out, n)) for n in ("sw_seed0", "en_seed0", "en_seed1")}
    rows = list(csv.DictReader(open(tmp_path / "report" / "mask_similarity.csv")))
    assert [(r["pair"], r["component"], r["layer"]) for r in rows] == [
        (p, c, str(l)) for p in ("sw-en", "en-en") for c in ("attn", "ffn") for l in (0, 1)]
    for r in rows:
        a, b = pis[r["run_a"]][f"layer{r['layer']}.{r['component']}"], pis[r["run_b"]][f"layer{r['layer']}.{r['component']}"]
        want = float(a.double() @ b.double() / (a.double().norm() * b.double().norm()))
        assert float(r["cosine"]) == pytest.approx(want, abs=1e-12)
    top = list(csv.DictReader(open(tmp_path / "report" / "mask_top_sw.csv")))
    assert [r["side"] for r in top] == ["negative"] * 10 + ["positive"] * 10
    values = [float(r["pi_lang"]) for r in top]
    assert values == sorted(values)
    flat_sw = torch.cat([pis["sw_seed0"][k] for k in ("layer0.attn", "layer0.ffn", "layer1.attn", "layer1.ffn")])
    assert values[0] == pytest.approx(float(flat_sw.min() / flat_sw.abs().max()), rel=1e-6)
    assert values[-1] == pytest.approx(float(flat_sw.max() / flat_sw.abs().max()), rel=1e-6)
    assert {r["lang"] for r in top} == {"sw"} and {r["ref"] for r in top} == {"en"}
    for r in top:  # the en value is en's normalised π of the same gate
        key, idx = r["group"].split("[")[0], int(r["index"])
        en = pis["en_seed0"]
        scale = max(float(v.abs().max()) for v in en.values())
        assert float(r["pi_ref"]) == pytest.approx(float(en[key][idx]) / scale, rel=1e-6)


def test_similarity_and_top_groups_on_known_vectors():
    a = {"layer0.attn": torch.tensor([1.0, 0.0]), "layer0.ffn": torch.tensor([1.0, 2.0, -4.0])}
    b = {"layer0.attn": torch.tensor([0.0, 3.0]), "layer0.ffn": torch.tensor([2.0, 4.0, -8.0])}
    rows = similarity_rows({"xx_seed0": a, "en_seed0": b}, [("xx_seed0", "en_seed0")])
    assert [(r["component"], r["cosine"]) for r in rows] == [("attn", 0.0), ("ffn", pytest.approx(1.0))]
    assert math.isnan(cosine(torch.zeros(2), torch.ones(2)))
    assert normalise(torch.tensor([2.0, -4.0])).tolist() == [0.5, -1.0]
    top = top_groups(a, b, k=2, lang="xx", ref="en")
    assert [(r["side"], r["rank"], r["group"], r["pi_lang"], r["pi_ref"]) for r in top] == [
        ("negative", 1, "layer0.ffn[2]", -1.0, -1.0), ("negative", 2, "layer0.attn[1]", 0.0, 3 / 8),
        ("positive", 2, "layer0.ffn[0]", 0.25, 0.25), ("positive", 1, "layer0.ffn[1]", 0.5, 0.5)]
    with pytest.raises(AnalysisError, match="groups differ"):
        similarity_rows({"a_seed0": a, "b_seed0": {"layer0.attn": torch.ones(3)}}, [("a_seed0", "b_seed0")])


# ----------------------------------------------------------------------------------------------- refusals
def test_bad_inputs_are_refused_by_name(mask_runs, tmp_path):
    pre, ds = mask_runs["pre"], mask_runs["ds"]
    out = str(tmp_path / "bad")
    with pytest.raises(AnalysisError, match="language 'fr' is not a language of the model"):
        train_language_mask(pre, "fr", 0, MASK_CFG, ds, out, progress=False)
    with pytest.raises(AnalysisError, match="ZeRO stage 3 is not supported"):
        train_language_mask(pre, "sw", 0, MASK_CFG, {**ds, "zero_optimization": {"stage": 3}}, out, progress=False)
    bad = MaskConfig(steps=0, lr=-1.0, lambda_l0=float("nan"), groups="rows", init_drop_rate=1.0)
    problems = bad.validate()
    assert len(problems) == 5 and all(any(f in p for p in problems) for f in
                                      ("steps", "lr", "lambda_l0", "groups", "init_drop_rate"))
    with pytest.raises(AnalysisError, match="invalid MaskConfig: steps"):
        train_language_mask(pre, "sw", 0, bad, ds, out, progress=False)
    for spec in (["attn"], ["ffn"]):
        cfg = dataclasses.replace(SMALL, language_specific=spec)
        with pytest.raises(AnalysisError, match=f"{spec[0]} is language-specific"):
            build_groups(build_model(cfg, V, 2), "structured")
        ls = dataclasses.replace(pre, model=build_model(dataclasses.replace(pre.cfg.model, language_specific=spec),
                                                        pre.vocab.size, 2))
        with pytest.raises(AnalysisError, match="L0 masks analyse shared parameters only"):
            train_language_mask(ls, "sw", 0, MASK_CFG, ds, out, progress=False)
    # language-specific LayerNorms are not masked: the groups still build
    assert len(build_groups(build_model(dataclasses.replace(SMALL, language_specific=["ln"]), V, 2))) == 4
    assert not os.path.exists(out), "a refused run must not create its directory"


# ----------------------------------------------------------------------------------------------- 2 processes
TWO_PROC = """
import json, sys
import deepspeed
deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
from negint_ds.analysis.masks import MaskConfig, train_language_mask
from negint_ds.analysis.pretrained import load_pretrained
from negint_ds.train.dist import shutdown_distributed
run, out, ds = sys.argv[1:4]
cfg = MaskConfig(**json.loads(sys.argv[4]))
train_language_mask(load_pretrained(run), "sw", 0, cfg, json.load(open(ds)), out, progress=False)
shutdown_distributed()
"""


@pytest.mark.slow
def test_two_processes_learn_the_masks_of_one(mask_runs, pretrained_run, tmp_path):
    """2 ranks × 1 micro-batch average the gradients that 1 process accumulates over 2 micro-batches."""
    script = tmp_path / "two.py"
    script.write_text(TWO_PROC)
    ds = write_ds_config(str(tmp_path / "ds.json"), stage=2, micro=4)
    port = str(free_port())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           str(script), pretrained_run, str(tmp_path / "out"), ds, json.dumps(dataclasses.asdict(MASK_CFG))]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=child_env(MASTER_PORT=port))
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    two = json.load(open(tmp_path / "out" / "sw_seed0" / "summary.json"))
    one = mask_runs["summaries"]["sw_seed0"]
    assert two["world_size"] == 2 and one["world_size"] == 1
    a, b = load_mask(os.path.join(mask_runs["out"], "sw_seed0")), load_mask(str(tmp_path / "out" / "sw_seed0"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    assert two["valid_loss_masked"] == pytest.approx(one["valid_loss_masked"], rel=1e-5)
    assert [r["objective"] for r in two["history"]] == pytest.approx([r["objective"] for r in one["history"]],
                                                                     rel=1e-5)
