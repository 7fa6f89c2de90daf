"""Algorithm 1 through the real DeepSpeed trainer, checked against the maths (not against itself).

A tiny float64 model, plain SGD for φ and no clipping: one meta step must move φ_i by exactly
−α × ∇φ_i F, where ∇φ_i F is the brute-force central difference of the meta objective F (Eq. 3),
computed by :func:`negint_ds.meta.brute_force_hypergradient`, which shares no code with the trainer's
hypergradient. This catches wiring bugs the function-level tests cannot: β not passed, the
hypergradient's sign, the probes' location, the 1/2ε factor, a wrong language's φ, the wrong order.
"""
import pytest
import torch

from conftest import write_ds_config
from negint_ds.meta import brute_force_hypergradient
from negint_ds.model import MaskedLM
from negint_ds.params import split_parameters
from negint_ds.train.prefetch import Prefetcher
from negint_ds.train.setup import RunArgs, prepare_run
from negint_ds.train.trainer import Trainer


ALPHA, BETA = 0.3, 0.5
TINY = ["model.layers=1", "model.dim=8", "model.heads=2", "model.ffn_dim=16", "model.adapters.bottleneck=2",
        "model.dropout=0.0", "model.attention_dropout=0.0", "model.adapters.kind=language", "meta.enabled=true",
        "meta.val_batch_size=8", "meta.val_micro_batch=4", "meta.phi_optimizer=sgd", f"meta.alpha={ALPHA}",
        f"meta.beta={BETA}", "meta.fd_scale=1e-3"]


pytestmark = pytest.mark.usefixtures("process_group")  # in-process DeepSpeed trainers

def fp64_trainer(tiny_data, tmp_path, monkeypatch, overrides):
    import negint_ds.train.trainer as trainer_mod

    from deepspeed.accelerator import get_accelerator

    build = trainer_mod.build_model
    monkeypatch.setattr(trainer_mod, "build_model", lambda *a, **k: build(*a, **k).double())
    acc = type(get_accelerator())
    dtypes = acc.supported_dtypes  # DeepSpeed's gradient all-reduce lists fp64 as unsupported on CPU
    monkeypatch.setattr(acc, "supported_dtypes", lambda self: [*dtypes(self), torch.float64])
    ds = write_ds_config(str(tmp_path / "ds.json"), stage=0, gradient_clipping=0.0)
    args = RunArgs(run_dir=str(tmp_path / "run"), config=tiny_data["recipe"], deepspeed_config=ds,
                   overrides=[*TINY, *overrides, "train.max_steps=5"])
    t = Trainer(prepare_run(args, 1), rank=0, world_size=1, resume=False, overwrite=False, progress=False)
    t.prefetcher = Prefetcher(t.batches, 0, 5)
    assert next(t.engine.module.parameters()).dtype == torch.float64
    return t


def model_at(module, state):
    m = MaskedLM(module.dims).double()
    m.load_state_dict(state)
    return m.train(module.training)


def flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


@pytest.mark.parametrize("method, order, phi_batch", [
    ("finite_difference", "phi_first", "same"), ("exact", "phi_first", "same"),
    ("finite_difference", "theta_first", "same"), ("exact", "theta_first", "fresh")])
def test_phi_update_is_minus_alpha_times_the_brute_force_hypergradient(tiny_data, tmp_path, monkeypatch, method,
                                                                        order, phi_batch):
    t = fp64_trainer(tiny_data, tmp_path, monkeypatch, [f"meta.hypergradient={method}", f"meta.order={order}",
                                                        f"meta.phi_batch={phi_batch}"])
    module = t.engine.module
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    lang, _, batches = t.train_step(0)
    after = {k: v.detach().clone() for k, v in module.state_dict().items()}
    names = list(split_parameters(module, 2).phi[lang])
    # Algorithm 1 differentiates F at (θ^(t), φ^(t)); the official order at (θ^(t+1), φ^(t))
    point = dict(before) if order == "phi_first" else {**after, **{n: before[n] for n in names}}
    if order == "theta_first":
        assert any(not torch.equal(after[n], before[n]) for n in after if n not in names), "θ did not step first"
    inputs = t.phi.meta_inputs(0, lang, batches)
    same = len(inputs.train) == len(batches) and all(
        torch.equal(a.input_ids, b.input_ids) for a, b in zip(inputs.train, batches))
    assert same == (phi_batch == "same"), "the φ step must use the θ step's batch (same) or another one (fresh)"
    assert inputs.train_phase == ("fresh" if phi_batch == "fresh" else "train")
    expected = -ALPHA * flat(brute_force_hypergradient(model_at(module, point), lang, inputs, BETA))
    step = flat([after[n] - before[n] for n in names])
    err = float((step - expected).norm() / expected.norm())
    assert err < 1e-6, f"φ update differs from −α ∇F (brute force) by {err:.2e} relative"
    assert t.phi.stats["second_order_share"] > 0.05, "β too small for the test to see Eq. 4's term"
    other = [n.replace(f".per_lang.{lang}.", f".per_lang.{1 - lang}.") for n in names]
    assert all(torch.equal(after[n], before[n]) for n in other), "φ_j (j ≠ i) moved"
