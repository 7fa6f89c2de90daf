"""``--dry_run``: every shipped recipe × every shipped DeepSpeed config is checked without a GPU or training.

The matrix test is the guard against start-up crashes such as the one that shipped when the GPU configs'
128-sequence micro-batch became the meta-validation micro-batch (meta.val_batch_size 64): a pair may be
refused only for a reason named here, anything else fails with the pair and the message.
"""
import glob
import json
import os

import pytest
import torch

from conftest import REPO, run_launcher, write_ds_config
from negint_ds.config import ConfigError, load_experiment, read_ds_config
from negint_ds.train.dry_run import dry_run, format_report
from negint_ds.train.run_dir import RunDir
from negint_ds.train.setup import RunArgs, dump_yaml, prepare_run

RECIPES = sorted(glob.glob(os.path.join(REPO, "negint_ds", "recipes", "*.yaml")))
DS_CONFIGS = sorted(glob.glob(os.path.join(REPO, "ds_configs", "*.json")))
TARGETS = ("cpu", "cuda")


def _name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _mixed_precision(ds: dict) -> str | None:
    return next((k for k in ("bf16", "fp16") if ds.get(k, {}).get("enabled")), None)


def _unexpected(result, ds: dict, target: str, zero3_refused: bool) -> list[str]:
    """Problems outside the allowed reasons, and allowed refusals that are missing."""
    mixed, stage3 = _mixed_precision(ds), ds.get("zero_optimization", {}).get("stage") == 3
    bad = []
    for p in result.problems:
        if p.category == "data":
            continue  # CI has no prepared data for the built-in corpora (they are downloaded)
        if p.category == "hardware" and target == "cpu" and mixed and mixed in p.message and "GPU" in p.message:
            continue
        if p.category == "config" and stage3 and zero3_refused and "ZeRO-3" in p.message:
            continue
        bad.append(f"unexpected {p}")
    if target == "cpu" and mixed and not any(p.category == "hardware" for p in result.problems):
        bad.append(f"missing: {mixed} on a CPU target was not refused")
    if stage3 and zero3_refused and not any("ZeRO-3" in p.message for p in result.problems):
        bad.append("missing: ZeRO-3 with language-specific φ or the gradient-conflict probe was not refused")
    return bad


def test_the_matrix_covers_meta_recipes_and_gpu_configs():
    assert any(load_experiment(r).meta.enabled for r in RECIPES) and len(RECIPES) >= 20
    assert any(_mixed_precision(read_ds_config(d)) for d in DS_CONFIGS) and len(DS_CONFIGS) >= 8


@pytest.mark.parametrize("recipe_path", RECIPES, ids=_name)
def test_every_recipe_with_every_ds_config_would_start_or_is_refused_for_a_named_reason(recipe_path, tmp_path):
    """Config problems are allowed only for ZeRO-3 with φ or with the gradient-conflict probe (both read whole
    tensors): so every GPU config must fit every meta recipe."""
    cfg = load_experiment(recipe_path)
    has_phi = cfg.model.has_language_specific
    zero3_refused = has_phi or cfg.analysis.grad_conflict.enabled
    failures = []
    for ds_path in DS_CONFIGS:
        ds = read_ds_config(ds_path)
        for target in TARGETS:
            pair = f"{_name(recipe_path)} x {os.path.basename(ds_path)} (target {target})"
            args = RunArgs(run_dir=str(tmp_path / "run"), config=recipe_path, deepspeed_config=ds_path)
            result = dry_run(args, target_device=target, world_size=1)
            failures += [f"{pair}: {msg}" for msg in _unexpected(result, ds, target, zero3_refused)]
            m = result.model
            if m is None:
                failures.append(f"{pair}: the model was not built on the meta device")
            elif m.total != m.theta + sum(m.phi.values()) or bool(sum(m.phi.values())) != has_phi:
                failures.append(f"{pair}: θ/φ split does not add up: {m}")
            if cfg.meta.enabled and result.preflight.ds_cfg is not None:
                v = result.val_micro
                if not v or cfg.meta.val_batch_size % v:
                    failures.append(f"{pair}: meta-validation micro-batch {v} does not divide "
                                    f"meta.val_batch_size={cfg.meta.val_batch_size}")
    assert not os.path.exists(tmp_path / "run"), "a dry run created its run directory"
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("world", [2, 8])
def test_meta_recipes_fit_gpu_configs_on_several_gpus(world, tmp_path):
    meta = [r for r in RECIPES if load_experiment(r).meta.enabled]
    assert meta, "no meta recipe shipped?"
    failures = []
    for r in meta:
        for ds_path in (d for d in DS_CONFIGS if _name(d).startswith("gpu_")):
            args = RunArgs(run_dir=str(tmp_path / "run"), config=r, deepspeed_config=ds_path)
            result = dry_run(args, target_device="cuda", world_size=world)
            failures += [f"{_name(r)} x {_name(ds_path)} (world {world}): {p}" for p in result.problems
                         if p.category == "config" and "ZeRO-3" not in p.message]
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------ the tiny prepared corpus

@pytest.fixture
def tiny_args(tiny_data, tmp_path):
    ds = write_ds_config(str(tmp_path / "ds.json"), stage=2, micro=4)
    return RunArgs(run_dir=str(tmp_path / "run"), config=tiny_data["recipe"], deepspeed_config=ds)


def test_prepared_run_passes_and_reports(tiny_args):
    was_initialised = torch.distributed.is_initialized()
    result = dry_run(tiny_args, target_device="cpu", world_size=2)
    assert result.ok, result.problems
    assert torch.distributed.is_initialized() == was_initialised, "a dry run must not start a process group"
    assert result.preflight.train_streams is not None and result.model.vocab_from == "prepared vocabulary"
    assert result.model.vocab_size == 300 and all(p == 0 for p in result.model.phi.values())
    text = format_report(result)
    assert "4 micro x 1 accumulation x 2 processes = 8 sequences/step; 256 tokens/step" in text
    assert "fp32, ZeRO stage 2" in text and "vocabulary 300 pieces" in text and "the run would start" in text


def test_every_problem_is_collected_with_its_category(tiny_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("not a run")
    ds = write_ds_config(str(tmp_path / "ds.json"), stage=3, micro=4, bf16={"enabled": True})
    args = RunArgs(run_dir=str(run), config=tiny_data["recipe"], deepspeed_config=ds,
                   overrides=["model.adapters.kind=language", "meta.enabled=true", "meta.val_batch_size=6",
                              "meta.val_micro_batch=4", f"data.dir={tmp_path / 'nodata'}"])
    result = dry_run(args, target_device="cpu", world_size=1)
    by = {c: [p.message for p in result.problems if p.category == c] for c in ("run_dir", "hardware", "config", "data")}
    assert any("already exists" in m for m in by["run_dir"])
    assert any("bf16.enabled: mixed precision needs a GPU" in m for m in by["hardware"])
    assert any("ZeRO-3 partitions every module parameter" in m for m in by["config"])
    assert any("meta.val_batch_size=6 must be a multiple of meta.val_micro_batch (4)" in m for m in by["config"])
    assert any("not a prepared data directory" in m for m in by["data"])
    assert result.model is not None and sum(result.model.phi.values()) > 0
    assert os.listdir(run) == ["notes.txt"] and not os.path.exists(tmp_path / "nodata")


def test_dry_run_reports_what_the_real_run_raises(tiny_args, tmp_path):
    """The real run stops at the first failing check with the same messages the dry run collects."""
    bad = RunArgs(**{**vars(tiny_args), "overrides": ["model.layers=0", "train.lr=3"]})
    with pytest.raises(ConfigError) as e:
        prepare_run(bad, 1)
    collected = [p.message for p in dry_run(bad, "cpu", 1).problems if p.source == e.value.source]
    assert collected == e.value.problems and len(collected) == 2


def test_meta_layout_is_checked_for_the_world_size(tiny_args, monkeypatch):
    args = RunArgs(**{**vars(tiny_args), "overrides": ["model.adapters.kind=language", "meta.enabled=true",
                                                       "meta.val_batch_size=8"]})
    assert dry_run(args, "cpu", 1).val_micro == 4
    monkeypatch.setenv("WORLD_SIZE", "3")  # the launcher's environment, when --world_size is not given
    result = dry_run(args, "cpu")
    assert result.world_size == 3
    assert any("meta.val_batch_size=8 is not a multiple of the world size (3)" in p.message
               for p in result.problems if p.category == "config")


def test_resume_is_checked_as_the_real_run_would(tiny_args, tmp_path):
    cfg = load_experiment(tiny_args.config)
    RunDir(tiny_args.run_dir).create(False, dump_yaml(cfg), json.load(open(tiny_args.deepspeed_config)) |
                                     {"train_batch_size": 4})
    resume = RunArgs(run_dir=tiny_args.run_dir, resume=True, overrides=["train.max_steps=99"])
    result = dry_run(resume, "cpu", 1)
    assert result.ok, result.problems
    assert result.preflight.cfg.train.max_steps == 99 and "resuming at step 0" in format_report(result)
    bad = RunArgs(**{**vars(resume), "overrides": ["model.layers=3"]})
    assert [p.message for p in dry_run(bad, "cpu", 1).problems][0].startswith("--set model.layers: cannot change")
    problems = dry_run(resume, "cpu", 2).problems  # the saved train_batch_size pins the world size
    assert any("train_batch_size=4 does not equal" in p.message for p in problems)
    other = write_ds_config(str(tmp_path / "ds8.json"), micro=8)
    problems = dry_run(RunArgs(**{**vars(resume), "deepspeed_config": other}), "cpu", 1).problems
    assert any("train_micro_batch_size_per_gpu: differs from the run's ds_config.json" in p.message for p in problems)
    # with a checkpoint, the real run compares its vocabulary and data with the prepared ones (run.json records them)
    paths = RunDir(tiny_args.run_dir)
    os.makedirs(os.path.join(paths.checkpoints, "step_00000010"))  # written before checkpoint manifests
    paths.commit_checkpoint("step_00000010", 10, keep=1)
    prep = prepare_run(RunArgs(**{**vars(tiny_args), "run_dir": str(tmp_path / "other")}), 1)
    recorded = {"vocab_sha256": prep.vocab.sha256, "data_fingerprint": prep.manifest["fingerprint"],
                "lang_ids": prep.cfg.lang_ids}
    for sha, ok in ((prep.vocab.sha256, True), ("0" * 64, False)):
        with open(paths.meta, "w") as f:
            json.dump(recorded | {"vocab_sha256": sha}, f)
        result = dry_run(resume, "cpu", 1)
        assert result.ok == ok and "from checkpoint step_00000010 (step 10)" in format_report(result)
    assert "checkpoint was trained with vocabulary 000000000000" in str(result.problems[0])
    nothing = RunArgs(run_dir=str(tmp_path / "empty"), resume=True)
    assert [p.category for p in dry_run(nothing, "cpu", 1).problems] == ["run_dir"]


# ------------------------------------------------------------------ the launcher's command line

def _files_under(path: str) -> dict:
    return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs}


def test_cli_dry_run_passes_and_writes_nothing(tiny_args, tiny_data):
    before = _files_under(tiny_data["dir"])
    p = run_launcher(["--dry_run", "--deepspeed_config", tiny_args.deepspeed_config, "--config", tiny_args.config,
                      "--run_dir", tiny_args.run_dir], timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    for text in ("dry run: nothing trained, nothing written", "θ (DeepSpeed)", "φ per language", "batch",
                 "ZeRO stage 2", "the run would start"):
        assert text in p.stdout, text
    assert not os.path.exists(tiny_args.run_dir), "a dry run created its run directory"
    assert _files_under(tiny_data["dir"]) == before, "a dry run wrote under the data directory"


def test_cli_lists_every_problem_and_exits_2(tiny_args, tmp_path, cli):
    from negint_ds.train.cli import main

    bad_ds = write_ds_config(str(tmp_path / "bad.json"), micro=4, accum=2, train_batch_size=12)
    code, out, err = cli(main, ["--dry_run", "--deepspeed_config", bad_ds, "--config", tiny_args.config, "--run_dir",
                                tiny_args.run_dir, "--set", "meta.enabled=true",
                                "--set", f"data.dir={tmp_path / 'nodata'}"])
    assert code == 2, out + err
    for text in ("[config]", "meta.enabled: needs model.adapters.kind=language",
                 "train_batch_size=12 does not equal train_micro_batch_size_per_gpu=4"):
        assert text in err, text
    assert not os.path.exists(tiny_args.run_dir)


def test_cli_refuses_bf16_on_a_cpu_target(tiny_args, tiny_data, tmp_path, cli):
    from negint_ds.train.cli import main

    ds = write_ds_config(str(tmp_path / "bf16.json"), bf16={"enabled": True})
    base = ["--dry_run", "--deepspeed_config", ds, "--config", tiny_args.config, "--run_dir", tiny_args.run_dir]
    code, out, err = cli(main, base + ["--target_device", "cpu"])
    assert code == 2, out + err
    assert "[hardware]" in err and "bf16.enabled: mixed precision needs a GPU" in err
    assert "bf16, ZeRO stage 2" in out  # the rest of the report is still there


def test_dry_run_options_need_dry_run(tiny_args):
    from negint_ds.train.cli import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--run_dir", tiny_args.run_dir, "--world_size", "2"])
    a = parse_args(["--run_dir", "r", "--dry_run", "--target_device", "cuda", "--world_size", "8"])
    assert (a.dry_run, a.target_device, a.world_size) == (True, "cuda", 8)
