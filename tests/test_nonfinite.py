"""The non-finite policy: consecutive bad steps stop a run with a named error, nothing non-finite is
checkpointed or exported, and metrics files stay strict JSON."""
import json
import os
import types

import pytest
import torch

from conftest import read_metrics, run_launcher, write_ds_config
from negint_ds.atomic import atomic_write_json
from negint_ds.train.metrics import strict_json_record
from negint_ds.train.nonfinite import NonFiniteError, NonFiniteGuard, parameters_finite


def _engine(fp16=False, scale=1.0, min_scale=1.0):
    scaler = types.SimpleNamespace(cur_scale=scale, min_scale=min_scale, dynamic=True, update_scale=lambda o: None)
    return types.SimpleNamespace(skipped_steps=0, fp16_enabled=lambda: fp16,
                                 optimizer=types.SimpleNamespace(loss_scaler=scaler))


def _steps(guard, engine, pattern, start=1):
    """pattern: 'n' non-finite loss, 's' skipped update with a finite loss, '.' a good step."""
    for i, c in enumerate(pattern, start):
        if c == "s":
            engine.skipped_steps += 1
        guard.after_step(i, torch.tensor(float("nan") if c == "n" else 1.0))


def test_a_streak_at_the_limit_stops_and_a_shorter_one_does_not():
    eng = _engine()
    g = NonFiniteGuard(3, "stop", eng, torch.device("cpu"))
    _steps(g, eng, "nn.ss.n")  # streaks of 2, 2, 1: below the limit
    g.check(7)
    _steps(g, eng, "ns", start=8)  # 1 + 2 = 3 consecutive across the logging boundary
    with pytest.raises(NonFiniteError, match=r"3 consecutive optimiser steps up to step 9.*first bad step of the run "
                                             r"was 1"):
        g.check(9)


def test_warn_logs_and_carries_on(caplog):
    eng = _engine()
    g = NonFiniteGuard(2, "warn", eng, torch.device("cpu"))
    caplog.set_level("WARNING", logger="negint_ds")
    _steps(g, eng, "nnn")
    import logging

    logging.getLogger("negint_ds").addHandler(caplog.handler)
    try:
        g.check(3)
    finally:
        logging.getLogger("negint_ds").removeHandler(caplog.handler)
    assert "carrying on (train.nonfinite.action=warn)" in caplog.text


def test_fp16_skips_while_the_scaler_searches_are_excused_but_nan_losses_are_not():
    eng = _engine(fp16=True, scale=2.0 ** 16, min_scale=1.0)
    g = NonFiniteGuard(2, "stop", eng, torch.device("cpu"))
    _steps(g, eng, "sssss")  # the scaler halves its scale: DeepSpeed's own warm-up
    g.check(5)
    eng.optimizer.loss_scaler.cur_scale = 1.0  # at the minimum, a skip means divergence
    _steps(g, eng, "ss", start=6)
    with pytest.raises(NonFiniteError):
        g.check(7)
    eng.optimizer.loss_scaler.cur_scale = 2.0 ** 10
    g = NonFiniteGuard(2, "stop", eng, torch.device("cpu"))
    _steps(g, eng, "nn")
    with pytest.raises(NonFiniteError):
        g.check(2)


def test_parameters_finite():
    m = torch.nn.Linear(3, 2)
    assert parameters_finite(m)
    with torch.no_grad():
        m.bias[1] = float("inf")
    assert not parameters_finite(m)


def test_metrics_and_reports_are_strict_json(tmp_path):
    rec = strict_json_record({"kind": "valid", "step": 3, "ppl_en": float("nan"), "loss_en": float("inf"), "x": 1.0})
    assert rec["ppl_en"] is None and rec["loss_en"] is None and rec["x"] == 1.0
    assert rec["nonfinite"] == ["loss_en", "ppl_en"]
    path = str(tmp_path / "f.json")
    atomic_write_json(path, {"valid": {"en": {"ppl": float("nan")}}, "ok": [1.5, float("-inf")]})
    strict = json.loads(open(path).read(), parse_constant=lambda c: pytest.fail(f"non-JSON token {c}"))
    assert strict == {"valid": {"en": {"ppl": None}}, "ok": [1.5, None]}


@pytest.mark.parametrize("stage", [0, 2])
def test_diverging_run_stops_named_keeps_the_last_finite_checkpoint_and_exports_nothing(tiny_data, tmp_path, stage):
    """lr = 1e9: ZeRO-0 applies the NaN update (weights go non-finite: the save refuses), ZeRO-2 skips the
    overflowing steps (the streak of skips stops the run)."""
    ds = write_ds_config(str(tmp_path / "ds.json"), stage=stage, lr=1e9)
    run = str(tmp_path / "run")
    p = run_launcher(["--deepspeed_config", ds, "--config", tiny_data["recipe"], "--run_dir", run,
                      "--set", "train.max_steps=60", "--set", "train.save_every=2", "--set", "train.eval_every=2",
                      "--set", "train.warmup_steps=0", "--set", "train.nonfinite.max_consecutive_skips=4"])
    assert p.returncode == 3, p.stderr[-3000:]
    assert "error:" in p.stderr and ("consecutive optimiser steps" in p.stderr or "weights are not finite" in p.stderr)
    assert not os.path.exists(os.path.join(run, "export", "model.safetensors"))
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON token {c} in metrics.jsonl"))
    tags = sorted(t for t in os.listdir(os.path.join(run, "checkpoints")) if t.startswith("step_"))
    if stage == 2:  # the overflowing updates were skipped: the weights stayed finite and were checkpointed
        assert tags and json.load(open(os.path.join(run, "checkpoints", "latest.json")))["tag"] == tags[-1]
    else:  # the first NaN update reached the weights before the first save: nothing may be checkpointed
        assert "weights are not finite" in p.stderr
    for tag in tags:
        state = torch.load(os.path.join(run, "checkpoints", tag, "mp_rank_00_model_states.pt"),
                           map_location="cpu", weights_only=False)["module"]
        assert all(torch.isfinite(v).all() for v in state.values()), f"non-finite checkpoint {tag} was written"
    assert any("loss" in r.get("nonfinite", []) for r in read_metrics(run, "train")), "NaN must be logged as null + flag"
