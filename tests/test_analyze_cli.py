"""launchers/analyze.py end to end on a tiny finished run: every sub-command writes its files; bad input is a
named error (exit 2) before anything is written."""
import os
import subprocess
import sys

import pytest

from conftest import REPO, child_env, free_port

ANALYZE = os.path.join(REPO, "launchers", "analyze.py")


def analyze(*args):
    return subprocess.run([sys.executable, ANALYZE, *args], capture_output=True, text=True, timeout=600, cwd=REPO,
                          env=child_env(MASTER_PORT=str(free_port())))


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


def test_grad_conflict_offline_command(run):
    p = analyze("grad_conflict", "--run_dir", run["run"], "--sequences", "8", "--micro_batch", "4", "--controls", "en",
                "--no_progress")
    assert p.returncode == 0, p.stderr[-3000:]
    from negint_ds.analysis.grad_conflict import read_rows

    rows = read_rows(os.path.join(run["run"], "analysis", "grad_conflict_offline.csv"))
    assert sorted({r["step"] for r in rows}) == [6, 12]
    assert {r["pair"] for r in rows} == {"en-sw", "en-en"}


def test_grad_conflict_plot_across_runs(run):
    out = os.path.join(run["dir"], "fig3")
    p = analyze("grad_conflict_plot", "--runs", run["run"], "--offline", "--out_dir", out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert os.path.isfile(os.path.join(out, "grad_conflict_runs.png"))
    with open(os.path.join(out, "grad_conflict_runs.csv")) as f:
        assert "en-sw (run)" in f.read()
    p = analyze("grad_conflict_plot", "--runs", run["run"], "--out_dir", out)  # no online probe in this run
    assert p.returncode == 2 and "no gradient-conflict rows" in p.stderr


def test_warmup_loss_and_bpc_commands(run):
    out = os.path.join(run["dir"], "out")
    p = analyze("warmup_loss", "--runs", run["run"], "--out_dir", out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert os.path.isfile(os.path.join(out, "warmup_loss.png")) and "steps 4–12" in p.stdout
    p = analyze("bpc", "--runs", run["run"], "--langs", "sw", "--max_sentences", "10", "--out_dir", out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert os.path.isfile(os.path.join(out, "bpc.csv")) and "sw" in p.stdout


def test_masks_and_report_commands(run):
    """Two languages, two seeds each through DeepSpeed, then Fig. 4a (with both within-language controls) and 4b."""
    p = analyze("masks", "--deepspeed_config", run["ds"], "--run_dir", run["run"], "--seeds", "0", "1",
                "--set", "steps=8", "--set", "sequences_per_step=8", "--no_progress")
    assert p.returncode == 0, p.stderr[-3000:]
    masks = os.path.join(run["run"], "analysis", "masks")
    assert sorted(os.listdir(masks)) == ["en_seed0", "en_seed1", "sw_seed0", "sw_seed1"]
    assert "sw seed 1: sparsity" in p.stdout
    p = analyze("mask_report", "--run_dir", run["run"], "--pairs", "sw-en")
    assert p.returncode == 0, p.stderr[-3000:]
    import csv

    with open(os.path.join(run["run"], "analysis", "mask_similarity.csv"), newline="") as f:
        pairs = {r["pair"] for r in csv.DictReader(f)}
    assert len(pairs) == 3, pairs  # sw–en and the two within-language controls
    assert os.path.isfile(os.path.join(run["run"], "analysis", "mask_top_sw.png"))


@pytest.mark.parametrize("args,message", [
    (["grad_conflict", "--run_dir", "/nonexistent/run"], "not a negint_ds run directory"),
    (["grad_conflict", "--run_dir", "{run}", "--controls", "fr"], "'fr' is not a language of the model"),
    (["grad_conflict", "--run_dir", "{run}", "--sequences", "6", "--micro_batch", "4"], "not a multiple"),
    (["grad_conflict", "--run_dir", "{run}", "--checkpoints", "step_00000999"], "no checkpoint ['step_00000999']"),
    (["bpc", "--runs", "{run}", "--langs", "fr", "--out_dir", "{out}"], "fr"),
    (["masks", "--run_dir", "{run}", "--langs", "sw"], "--deepspeed_config is required"),
    (["masks", "--run_dir", "{run}", "--deepspeed_config", "{ds}", "--langs", "fr"], "'fr' is not a language"),
    (["masks", "--run_dir", "{run}", "--deepspeed_config", "{ds}", "--set", "stepz=3", "--set", "lr=-1"],
     "stepz: not a mask setting"),
    (["mask_report", "--run_dir", "{run}", "--pairs", "sw-en", "--mask_dir", "{out}"], "no masks in"),
])
def test_bad_input_is_a_named_error(run, cli, args, message):
    from negint_ds.analysis.cli import main

    out = os.path.join(run["dir"], "bad_out")
    code, _, err = cli(main, [a.replace("{run}", run["run"]).replace("{out}", out).replace("{ds}", run["ds"])
                              for a in args])
    assert code == 2, err[-2000:]
    assert message in err
    assert not os.path.exists(out)


def test_bad_input_exits_2_through_the_launcher(run):
    """The same refusal from a real launch: exit status 2 and one named error line, no traceback."""
    out = os.path.join(run["dir"], "bad_out_launcher")
    p = analyze("bpc", "--runs", run["run"], "--langs", "fr", "--out_dir", out)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "error:" in p.stderr and "fr" in p.stderr
    assert "Traceback" not in p.stderr
    assert not os.path.exists(out)
