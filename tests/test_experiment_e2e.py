"""`launchers/experiment.py --spec smoke` end to end on the built-in Bible corpus (issue 11): real runs, a kill in the
middle of a pretraining run, a second invocation that skips what finished and resumes what was interrupted, and the
tables checked against the runs' own output files."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, child_env

LAUNCHER = os.path.join(REPO, "launchers", "experiment.py")


def _cmd(tmp_path) -> list[str]:
    # JointPair trains 1,000 tiny steps with a checkpoint every 50, so the kill below lands mid-run
    return [sys.executable, LAUNCHER, "--spec", "smoke", "--no_progress", "--out_dir", str(tmp_path / "exp"),
            "--set", f"data_root={tmp_path / 'data'}", "--set", "rows=[Mono, JointPair]",
            "--set", "analyses.grad_conflict.every=500",
            "--set", "row_set={JointPair: [train.max_steps=1000, train.save_every=50, train.eval_every=500, "
                     "train.log_every=50]}"]


def _read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f) if path.endswith(".json") else list(csv.DictReader(f))


@pytest.mark.slow
def test_smoke_spec_runs_resumes_and_tabulates_real_outputs(tmp_path):
    exp = tmp_path / "exp"
    jp0 = exp / "runs" / "jointpair-sw-s0"
    p = subprocess.Popen(_cmd(tmp_path), cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    while not (jp0 / "checkpoints" / "latest.json").exists():
        assert p.poll() is None, "the experiment ended before JointPair saved its first checkpoint"
        assert time.time() - t0 < 900
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)  # the runner and its pretraining child, as a node failure would
    p.wait()
    assert not (jp0 / "final_ppl.json").exists(), "JointPair finished before the kill: nothing to resume"

    p = subprocess.run(_cmd(tmp_path), cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    logs = exp / "logs"
    for rid in ("mono-sw-s0", "mono-sw-s1"):  # finished before the kill: not run again
        assert (logs / f"{rid}.pretrain.log").read_text().count("\n$ ") == 1
    commands = [l for l in (logs / "jointpair-sw-s0.pretrain.log").read_text().splitlines() if l.startswith("$ ")]
    assert len(commands) == 2 and not commands[0].endswith("--resume") and commands[1].endswith("--resume")
    assert _read(str(jp0 / "final_ppl.json"))["step"] == 1000
    status = _read(str(exp / "status.json"))
    assert status["jointpair-sw-s0"]["pretrain"]["resumed"] is True
    assert all(rec["state"] == "done" for st in status.values() for rec in st.values())

    # the tables hold mean ± sample std over the two pretraining seeds of the runs' own outputs
    def seeds_of(row_id: str, read) -> list[float]:
        return [read(exp / "runs" / f"{row_id}-sw-s{s}") for s in (0, 1)]

    within = _read(str(exp / "tables" / "within.csv"))
    for row, rid in (("Mono", "mono"), ("JointPair", "jointpair")):
        got = next(r for r in within if r["row"] == row and r["measure"] == "bible_genre/within/accuracy")
        vals = seeds_of(rid, lambda d: next(r["accuracy_mean"] for r in _read(
            str(d / "downstream" / "builtin" / "bible_genre-within" / "results.json"))["rows"]))
        assert float(got["mean"]) == pytest.approx(np.mean(vals), abs=1e-12)
        assert float(got["std"]) == pytest.approx(np.std(vals, ddof=1), abs=1e-12)
        assert got["n"] == "2" and got["spread"] == "pretraining seeds"
    pre = _read(str(exp / "tables" / "pretrain.csv"))
    got = next(r for r in pre if r["row"] == "JointPair" and r["measure"] == "valid_ppl" and r["lang"] == "en")
    vals = seeds_of("jointpair", lambda d: _read(str(d / "final_ppl.json"))["valid"]["en"]["ppl"])
    assert float(got["mean"]) == pytest.approx(np.mean(vals), rel=1e-12)
    bpc = next(r for r in pre if r["row"] == "Mono" and r["measure"] == "bpc")
    vals = seeds_of("mono", lambda d: _read(str(d / "analysis" / "bpc" / "bpc.json"))[0]["bpc"])
    assert float(bpc["mean"]) == pytest.approx(np.mean(vals), rel=1e-12)

    report = (exp / "report.md").read_text()
    assert "| F1: Mono beats JointPair within-language" in report and "## Runs" in report
    assert (exp / "figures" / "grad_conflict_runs.png").is_file()  # Fig. 3 from JointPair's online probe
    assert (exp / "figures" / "downstream_sw.png").is_file()
    assert "report:" in p.stdout
