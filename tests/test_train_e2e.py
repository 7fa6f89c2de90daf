"""End-to-end runs of launchers/pretrain.py on the tiny corpus: training, refusals, exact resume, ZeRO stages."""
import json
from concurrent.futures import ThreadPoolExecutor
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import child_env, free_port, LAUNCHER, load_export, read_metrics, REPO, run_launcher, run_launchers, write_ds_config

NO_DROPOUT = ["--set", "model.dropout=0.0", "--set", "model.attention_dropout=0.0"]


@pytest.fixture(scope="module")
def ds2(tmp_path_factory):
    return write_ds_config(str(tmp_path_factory.mktemp("ds") / "zero2.json"), stage=2)


@pytest.fixture(scope="module")
def trained(tiny_data, ds2, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("runs") / "tiny")
    p = run_launcher(["--deepspeed_config", ds2, "--config", tiny_data["recipe"], "--run_dir", run,
                      "--set", "train.max_steps=40", "--set", "train.eval_every=10", "--set", "train.save_every=20"])
    assert p.returncode == 0, p.stderr[-3000:]
    return run, p


def test_tiny_run_trains_and_reports(trained):
    run, p = trained
    for f in ("config.yaml", "ds_config.json", "run.json", "train.log", "metrics.jsonl", "train.csv", "valid.csv",
              "final_ppl.md", "final_ppl.json", "ppl_curves.png", "export/model.safetensors", "export/spm.model",
              "export/model.json", "checkpoints/latest.json"):
        assert os.path.isfile(os.path.join(run, f)), f
    assert os.listdir(os.path.join(run, "tensorboard")), "no TensorBoard events"
    valid = read_metrics(run, "valid")
    assert [r["step"] for r in valid] == [0, 10, 20, 30, 40]
    for lang in ("en", "sw"):
        assert valid[-1][f"ppl_{lang}"] < 0.75 * valid[0][f"ppl_{lang}"], f"{lang} perplexity did not fall"
    train = read_metrics(run, "train")
    assert len(train) == 40 and all(r["tokens_per_s"] > 0 for r in train)
    assert "Validation perplexity at step 40" in p.stderr and "| en |" in p.stderr
    latest = json.load(open(os.path.join(run, "checkpoints", "latest.json")))
    assert latest["tag"] == "step_00000040" and [h["step"] for h in latest["history"]] == [20, 40]
    final = json.load(open(os.path.join(run, "final_ppl.json")))
    assert final["step"] == 40 and final["valid"]["en"]["ppl"] == pytest.approx(valid[-1]["ppl_en"])
    assert json.load(open(os.path.join(run, "export", "model.json")))["weights_source"] == "fp32 training"


def test_export_reloads_into_a_plain_model(trained, tiny_data):
    from negint_ds.checkpoint import load_pretrained

    run, _ = trained
    model, info = load_pretrained(run)
    assert info["lang_ids"] == ["en", "sw"] and info["step"] == 40
    assert model.encoder.tok_emb.weight.data_ptr() != 0
    final = json.load(open(os.path.join(run, "final_ppl.json")))
    # The reloaded model must reproduce the run's own validation perplexity.
    from negint_ds.config import MLMConfig
    from negint_ds.data.batches import eval_batches
    from negint_ds.data.binarized import open_binarized

    man = tiny_data["manifest"]
    cfg = info["config"]
    total, n = 0.0, 0
    s = open_binarized(os.path.join(tiny_data["data_dir"], man["languages"]["sw"]["splits"]["valid"]["file"]))
    with torch.no_grad():
        for b, _ in eval_batches(s, 1, cfg["train"]["seq_len"], cfg["train"]["eval_sequences"], 8, 0, 1, MLMConfig(),
                                 info["vocab_size"], info["mask_id"], 5, cfg["train"]["seed"]):
            total += float(model(b.input_ids, b.lang_ids, b.pred_positions, b.targets)) * b.targets.numel()
            n += b.targets.numel()
    assert torch.tensor(total / n).exp().item() == pytest.approx(final["valid"]["sw"]["ppl"], rel=1e-4)


def test_existing_run_dir_is_refused_and_untouched(trained, tiny_data, ds2):
    run, _ = trained
    before = {f: os.path.getmtime(os.path.join(run, f)) for f in ("metrics.jsonl", "config.yaml")}
    p = run_launcher(["--deepspeed_config", ds2, "--config", tiny_data["recipe"], "--run_dir", run])
    assert p.returncode == 2
    assert "already exists and holds a checkpoint at step 40; pass --resume" in p.stderr
    assert before == {f: os.path.getmtime(os.path.join(run, f)) for f in before}


def test_bad_inputs_stop_before_training(tiny_data, ds2, tmp_path, cli):
    from negint_ds.train.cli import main

    run = str(tmp_path / "r")
    bad_ds = write_ds_config(str(tmp_path / "bad.json"), micro=4, accum=2, train_batch_size=12)
    code, _, err = cli(main, ["--deepspeed_config", bad_ds, "--config", tiny_data["recipe"], "--run_dir", run])
    assert code == 2 and "train_batch_size=12 does not equal" in err
    code, _, err = cli(main, ["--deepspeed_config", ds2, "--config", tiny_data["recipe"], "--run_dir", run,
                              "--set", "train.lr=3", "--set", "model.layers=0"])
    assert code == 2 and "config.train.lr: unknown key" in err and "layers: must be positive" in err
    code, _, err = cli(main, ["--deepspeed_config", ds2, "--config", tiny_data["recipe"], "--run_dir", run,
                              "--set", f"data.dir={tmp_path / 'nodata'}"])
    assert code == 2 and "not a prepared data directory; run `python -m negint_ds.prepare" in err
    code, _, err = cli(main, ["--deepspeed_config", ds2, "--config", tiny_data["recipe"], "--run_dir", run,
                              "--set", "model.vocab_size=1000"])
    assert code == 2 and "model.vocab_size=1000" in err and "300 pieces" in err
    code, _, err = cli(main, ["--deepspeed_config", ds2, "--config", tiny_data["recipe"], "--run_dir", run,
                              "--set", "train.seq_len=2048", "--set", "model.max_positions=2048",
                              "--set", "model.adapters.kind=language", "--set", "meta.enabled=true",
                              "--set", "meta.val_batch_size=6", "--set", "meta.val_micro_batch=4"])
    assert code == 2 and "data does not fit the configuration" in err
    assert "valid tokens, fewer than train.seq_len=2048" in err
    assert "meta.val_batch_size=6 must be a multiple of meta.val_micro_batch (4)" in err
    assert not os.path.exists(run), "a refused run must not create its run directory"


def test_vocabulary_swapped_under_the_data_is_refused(tiny_data, ds2, tmp_path, cli):
    from negint_ds.train.cli import main

    data = str(tmp_path / "data")
    shutil.copytree(tiny_data["data_dir"], data)
    with open(os.path.join(data, "spm.model"), "ab") as f:
        f.write(b"\0")
    code, _, err = cli(main, ["--deepspeed_config", ds2, "--config", tiny_data["recipe"],
                              "--run_dir", str(tmp_path / "r"), "--set", f"data.dir={data}"])
    assert code == 2 and "spm.model" in err


META = ["--set", "model.adapters.kind=language", "--set", "meta.enabled=true", "--set", "meta.val_batch_size=8",
        "--set", "meta.val_micro_batch=4"]


@pytest.mark.parametrize("extra", [[], META], ids=["plain", "meta"])
def test_resume_continues_exactly(tiny_data, ds2, tmp_path, cli, extra):
    """N steps, stop, resume, N more == 2N uninterrupted (dropout on: it is seeded per step); with meta-learning
    the φ optimiser state and the meta-validation batches must continue too."""
    common = ["--deepspeed_config", ds2, "--config", tiny_data["recipe"], "--set", "train.eval_every=6",
              "--set", "train.save_every=6", *extra]
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    for p in run_launchers([common + ["--run_dir", full, "--set", "train.max_steps=12"],
                            common + ["--run_dir", part, "--set", "train.max_steps=6"]]):
        assert p.returncode == 0, p.stderr[-2000:]
    p = run_launcher(["--run_dir", part, "--resume", "--set", "train.max_steps=12"])
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resuming at step 6" in p.stderr
    a, b = read_metrics(full, "train"), read_metrics(part, "train")
    assert [r["step"] for r in b] == list(range(1, 13))
    assert [r["loss"] for r in a] == [r["loss"] for r in b], "losses after resume differ"
    assert [r["lr"] for r in a] == [r["lr"] for r in b], "scheduler state not restored"
    wa, wb = load_export(full), load_export(part)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "weights after resume differ"
    if extra:
        assert os.path.isfile(os.path.join(part, "export", "phi.safetensors"))
        assert [r.get("meta_val_loss") for r in a] == [r.get("meta_val_loss") for r in b]
    from negint_ds.train.cli import main

    code, _, err = cli(main, ["--run_dir", part, "--resume", "--set", "model.dim=64"])
    assert code == 2 and "cannot change on --resume" in err


def test_sigterm_checkpoints_and_resume_matches(tiny_data, ds2, tmp_path):
    """Stop a run with SIGTERM mid-way: it checkpoints; the resumed run ends where an uninterrupted one does."""
    common = ["--deepspeed_config", ds2, "--config", tiny_data["recipe"], "--set", "train.max_steps=120",
              "--set", "train.eval_every=1000", "--set", "train.save_every=1000"]
    run, ref = str(tmp_path / "stopped"), str(tmp_path / "ref")
    with ThreadPoolExecutor(1) as pool:  # the uninterrupted reference runs beside the stopped run
        ref_done = pool.submit(run_launcher, common + ["--run_dir", ref])
        _stop_and_resume(run, common)
        assert ref_done.result().returncode == 0
    wa, wb = load_export(ref), load_export(run)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _stop_and_resume(run, common):
    cmd = [sys.executable, LAUNCHER, "--no_progress", "--run_dir", run] + common
    env = child_env(MASTER_PORT=str(free_port()))
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = os.path.join(run, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.isfile(metrics) and sum(1 for _ in open(metrics)) >= 20:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    stopped_at = json.load(open(os.path.join(run, "checkpoints", "latest.json")))["step"]
    assert 0 < stopped_at < 120, "the run was not stopped mid-way"
    assert "stopped by signal" in err
    assert run_launcher(["--run_dir", run, "--resume"]).returncode == 0


@pytest.fixture(scope="module")
def stage_runs(tiny_data, tmp_path_factory):
    """5-step runs at ZeRO 0, 1 and 3, launched two at a time: {stage: run directory}."""
    d = tmp_path_factory.mktemp("zero_stages")
    runs = {stage: str(d / f"z{stage}") for stage in (0, 1, 3)}
    jobs = [["--deepspeed_config", write_ds_config(str(d / f"z{stage}.json"), stage=stage), "--config",
             tiny_data["recipe"], "--run_dir", run, "--set", "train.max_steps=5", "--set", "train.eval_every=5"]
            for stage, run in runs.items()]
    for stage, p in zip(runs, run_launchers(jobs)):
        assert p.returncode == 0, (stage, p.stderr[-3000:])
    return runs


@pytest.mark.parametrize("stage", [0, 1, 3])
def test_zero_stages_agree(trained, stage_runs, stage):
    """ZeRO 0, 1 and 3 reproduce the ZeRO-2 run's losses (fp32; only reduction order differs)."""
    ref_run, _ = trained
    got = [r["loss"] for r in read_metrics(stage_runs[stage], "train")]
    ref = [r["loss"] for r in read_metrics(ref_run, "train")][:5]
    assert got == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("extra", [["--set", "model.adapters.kind=language"], META], ids=["joint", "meta"])
def test_language_specific_training_agrees_across_zero_stages(tiny_data, tmp_path, extra):
    """φ handled beside DeepSpeed (functional φ gradients, own optimiser) works at ZeRO 0 and 2 (ZeRO-1 differs
    from 2 only in θ's gradient partitioning, which φ never enters; ZeRO-3 is refused for φ)."""
    stages, losses = (0, 2), {}
    runs = {stage: str(tmp_path / f"z{stage}") for stage in stages}
    jobs = [["--deepspeed_config", write_ds_config(str(tmp_path / f"z{stage}.json"), stage=stage), "--config",
             tiny_data["recipe"], "--run_dir", runs[stage], "--set", "train.max_steps=4", "--set", "train.eval_every=4",
             *extra] for stage in stages]
    for stage, p in zip(stages, run_launchers(jobs)):
        assert p.returncode == 0, p.stderr[-3000:]
        losses[stage] = [r["loss"] for r in read_metrics(runs[stage], "train")]
    assert losses[0] == pytest.approx(losses[2], rel=1e-5)
