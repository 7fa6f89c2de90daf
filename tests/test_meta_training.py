"""Algorithm 1 inside the DeepSpeed trainer (one gloo process): φ_j untouched, θ step sees φ^{new}, modes run."""

import pytest
import torch

from conftest import write_ds_config
from negint_ds.meta import mlm_loss
from negint_ds.train.prefetch import Prefetcher
from negint_ds.train.setup import RunArgs, prepare_run
from negint_ds.train.trainer import Trainer

QUIET = ["model.dropout=0.0", "model.attention_dropout=0.0", "meta.val_batch_size=8", "meta.val_micro_batch=4"]


@pytest.fixture(scope="module", autouse=True)
def _group(process_group):
    """In-process trainers need the session's 1-process gloo group (conftest.py)."""
    yield


def trainer(tiny_data, tmp_path, overrides, stage=2):
    ds = write_ds_config(str(tmp_path / "ds.json"), stage=stage)
    args = RunArgs(run_dir=str(tmp_path / "run"), config=tiny_data["recipe"], deepspeed_config=ds,
                   overrides=[*overrides, "train.max_steps=50"])
    t = Trainer(prepare_run(args, 1), rank=0, world_size=1, resume=False, overwrite=False, progress=False)
    t.prefetcher = Prefetcher(t.batches, 0, 50)
    return t


def snapshot(t):
    return {n: p.detach().clone() for n, p in t.engine.module.named_parameters()}


def phi_changed(t, before, lang):
    return any(not torch.equal(p, before[n]) for n, p in t.split.phi[lang].items())


@pytest.mark.parametrize("mode", ["finite_difference", "exact"])
def test_meta_step_follows_algorithm_1(tiny_data, tmp_path, mode):
    t = trainer(tiny_data, tmp_path, ["model.adapters.kind=language", "meta.enabled=true",
                                      f"meta.hypergradient={mode}", *QUIET])
    before = snapshot(t)
    lang, loss, batches = t.train_step(0)
    other = 1 - lang
    assert phi_changed(t, before, lang), "φ_i was not updated"
    assert not phi_changed(t, before, other), "φ_j (j ≠ i) must be bit-identical after a step on language i"
    assert any(not torch.equal(p, before[n]) for n, p in t.split.theta.items()), "θ was not updated"
    # The θ step's loss is L_train^i(θ_old, φ^{new}): recompute it with the new φ_i and the old θ.
    module = t.engine.module
    theta_old = {n: before[n] for n in t.split.theta}
    phi_new = {n: p.detach() for n, p in t.split.phi[lang].items()}
    phi_old = {n: before[n] for n in t.split.phi[lang]}
    with torch.no_grad():
        new = sum(float(mlm_loss(module, {**theta_old, **phi_new}, mb, lang)) for mb in batches) / len(batches)
        old = sum(float(mlm_loss(module, {**theta_old, **phi_old}, mb, lang)) for mb in batches) / len(batches)
    assert float(loss) == pytest.approx(new, rel=1e-6)
    assert abs(new - old) > 1e-7, "φ update too small for the test to tell old from new"
    assert t.phi.stats["meta_val_loss"] > 0 and t.phi.stats["phi_grad_norm"] > 0


def test_meta_probes_leave_theta_bit_identical(tiny_data, tmp_path):
    t = trainer(tiny_data, tmp_path, ["model.adapters.kind=language", "meta.enabled=true", *QUIET])
    lang, batches = t.prefetcher.get(0)
    before = snapshot(t)
    t.phi.meta_update(0, lang, batches, lr=1e-3, seed_hook=lambda *a: t.seed_dropout(0, *a))
    for n in t.split.theta:
        assert torch.equal(t.engine.module.get_parameter(n), before[n]), n
    assert t.phi.stats["fd_eps"] == pytest.approx(0.01 / t.phi.stats["v_norm"])


@pytest.mark.parametrize("overrides", [["model.adapters.kind=language"], ["model.language_specific=[ffn,attn,ln]"]])
def test_joint_training_leaves_other_languages_untouched(tiny_data, tmp_path, overrides):
    t = trainer(tiny_data, tmp_path, [*overrides, *QUIET])
    for step in range(4):
        before = snapshot(t)
        lang, _, _ = t.train_step(step)
        assert phi_changed(t, before, lang)
        assert not phi_changed(t, before, 1 - lang), f"step {step}: φ of the inactive language moved"


def test_zero3_is_refused_with_language_specific_parameters(tiny_data, tmp_path):
    from negint_ds.config import ConfigError

    with pytest.raises(ConfigError, match="ZeRO-3 partitions every module parameter"):
        trainer(tiny_data, tmp_path, ["model.adapters.kind=language"], stage=3)


@pytest.mark.parametrize("precision, informed", [("working", True), ("fp32", False)])
def test_non_finite_hypergradient_skips_phi_and_informs_the_fp16_loss_scaler(tiny_data, tmp_path, monkeypatch,
                                                                              precision, informed):
    """16-bit meta passes that overflow tell DeepSpeed's loss scaler, as an overflowing θ step does; fp32 meta passes
    use no loss scale, so their overflow says nothing about it and the scaler is left alone (a deliberate choice)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler

    import negint_ds.train.phi_training as phi_training

    t = trainer(tiny_data, tmp_path, ["model.adapters.kind=language", "meta.enabled=true",
                                      f"meta.precision={precision}", *QUIET])
    scaler = DynamicLossScaler(init_scale=2.0 ** 16, scale_window=1000, min_scale=1.0, delayed_shift=1,
                               consecutive_hysteresis=False)
    monkeypatch.setattr(t.engine, "fp16_enabled", lambda: True)  # this CPU run stands in for an fp16 one
    monkeypatch.setattr(t.engine.optimizer, "loss_scaler", scaler, raising=False)
    real = phi_training.hypergradient

    def overflowing(*args, **kwargs):
        hg = real(*args, **kwargs)
        hg.grad[0].view(-1)[0] = float("inf")
        return hg

    monkeypatch.setattr(phi_training, "hypergradient", overflowing)
    lang, batches = t.prefetcher.get(0)
    before = snapshot(t)
    stats = t.phi.meta_update(0, lang, batches, lr=1e-3, seed_hook=lambda *a: t.seed_dropout(0, *a))
    assert stats["phi_step_skipped"] == 1.0 and not phi_changed(t, before, lang)
    assert scaler.cur_scale == (2.0 ** 15 if informed else 2.0 ** 16)
