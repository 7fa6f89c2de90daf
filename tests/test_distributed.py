"""Two CPU processes on gloo (deepspeed launcher and mpirun) reproduce one process with the same global batch."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import find_tool, load_export, read_metrics, run_launcher, run_launchers, write_ds_config

pytestmark = pytest.mark.slow
# Two ranks average their gradients with one all-reduce; one process accumulates the same two
# micro-batches in another order. In fp32 that changes rounding only (~1e-7 relative per step), so
# after 8 Adam steps losses agree to 1e-5 relative and weights to 1e-5 absolute (seen: ~3e-8).
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-5


_META = ["--set", "model.adapters.kind=language", "--set", "meta.enabled=true", "--set", "meta.val_batch_size=8",
         "--set", "meta.val_micro_batch=4"]
# joint φ (language adapters, no meta-learning) with the θ-gradient probe on: one launch covers both the φ
# gradients across ranks and the probe's sharded sums
_JOINT_GC = ["--set", "model.adapters.kind=language", "--set", "analysis.grad_conflict.enabled=true",
             "--set", "analysis.grad_conflict.every=4", "--set", "analysis.grad_conflict.sequences=8"]
MODES = {"plain": [], "joint_grad_conflict": _JOINT_GC, "meta": _META,
         "meta_exact": [*_META, "--set", "meta.hypergradient=exact"]}
ANALYZE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launchers", "analyze.py")


def _args(tiny_data, ds, run, mode):
    # dropout stays on: its masks are seeded by the global micro-batch index, not by the rank
    return ["--deepspeed_config", ds, "--config", tiny_data["recipe"], "--run_dir", run, "--set", "train.max_steps=8",
            "--set", "train.eval_every=4", *MODES[mode]]


@pytest.fixture(scope="module")
def references(tiny_data, tmp_path_factory):
    """1-process runs with 2 accumulation steps: the same global batch as 2 processes x 1 micro-batch."""
    d = tmp_path_factory.mktemp("dist")
    ds = write_ds_config(str(d / "acc2.json"), stage=2, micro=4, accum=2)
    runs = {mode: str(d / f"one_{mode}") for mode in MODES}
    for mode, p in zip(MODES, run_launchers([_args(tiny_data, ds, runs[m], m) for m in MODES])):
        assert p.returncode == 0, (mode, p.stderr[-3000:])
    return runs, str(d)


def _compare(run, ref):
    a, b = read_metrics(ref, "train"), read_metrics(run, "train")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=LOSS_RTOL)
    va, vb = read_metrics(ref, "valid"), read_metrics(run, "valid")
    assert [r["ppl_sw"] for r in vb] == pytest.approx([r["ppl_sw"] for r in va], rel=LOSS_RTOL)
    wa, wb = load_export(ref), load_export(run)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < WEIGHT_ATOL


# Both launchers for the plain run. A launcher only sets each rank's environment, so the φ modes take mpiexec,
# whose start-up is ~10 s shorter than the deepspeed launcher's two extra Python levels (test_multinode.py runs
# the deepspeed launcher again, as two nodes).
@pytest.mark.parametrize("launcher,mode", [("deepspeed", "plain"), ("mpiexec", "plain"),
                                           ("mpiexec", "joint_grad_conflict"), ("mpiexec", "meta"),
                                           ("mpiexec", "meta_exact")])
def test_two_process_zero2_matches_one_process(tiny_data, references, launcher, mode):
    """ZeRO-2 over gloo. joint φ: φ gradients accumulated over 2 micro-batches (1 process) vs averaged over
    2 ranks, and the probe's rows; meta: θ gradients, v, the hypergradient and φ all cross the process boundary
    (for the exact hypergradient, through a differentiable all-reduce)."""
    refs, d = references
    exe = find_tool(launcher)
    if exe is None:
        pytest.fail(f"{launcher} not found next to {sys.executable} or on PATH (pip install deepspeed mpich mpi4py)")
    ds = write_ds_config(os.path.join(d, "world2.json"), stage=2, micro=4, accum=1)
    run = os.path.join(d, f"{launcher}_{mode}")
    prefix = ([exe, "--num_gpus", "2", "--master_port", "{port}"] if launcher == "deepspeed"
              else [exe, "-n", "2", sys.executable])
    p = run_launcher(_args(tiny_data, ds, run, mode), prefix=prefix)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert "2 process(es)" in p.stdout + p.stderr
    _compare(run, refs[mode])
    if mode.startswith("meta"):
        a, b = read_metrics(refs[mode], "train"), read_metrics(run, "train")
        assert [r["meta_val_loss"] for r in b] == pytest.approx([r["meta_val_loss"] for r in a], rel=LOSS_RTOL)
    if mode == "joint_grad_conflict":  # each rank takes every 2nd probe micro-batch; sums meet in one all-reduce
        _compare_probe_rows(os.path.join(run, "analysis", "grad_conflict.csv"),
                            os.path.join(refs[mode], "analysis", "grad_conflict.csv"))


def _compare_probe_rows(path, ref_path):
    from negint_ds.analysis.grad_conflict import read_rows

    a, b = read_rows(ref_path), read_rows(path)
    assert [(r["step"], r["pair"], r["group"]) for r in a] == [(r["step"], r["pair"], r["group"]) for r in b]
    assert sorted({r["step"] for r in a}) == [0, 4, 8]
    assert [r["cosine"] for r in b] == pytest.approx([r["cosine"] for r in a], abs=1e-5)


def _analyze(args, prefix):
    from conftest import child_env, free_port

    port = str(free_port())
    cmd = [port if x == "{port}" else x for x in prefix] + [ANALYZE, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=child_env(MASTER_PORT=port))


def test_offline_grad_conflict_two_processes_match_one(references, tmp_path):
    """launchers/analyze.py grad_conflict over a run's checkpoints: mpiexec -n 2 gives the rows of 1 process."""
    refs, _ = references
    exe = find_tool("mpiexec")
    if exe is None:
        pytest.fail(f"mpiexec not found next to {sys.executable} or on PATH (pip install mpich mpi4py)")
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    shutil.copytree(refs["joint_grad_conflict"], one)
    shutil.copytree(refs["joint_grad_conflict"], two)
    args = ["grad_conflict", "--sequences", "8", "--micro_batch", "2", "--no_progress", "--run_dir"]
    p = _analyze(args + [one], [sys.executable])
    assert p.returncode == 0, p.stderr[-3000:]
    p = _analyze(args + [two], [exe, "-n", "2", sys.executable])
    assert p.returncode == 0, p.stderr[-3000:]
    from negint_ds.analysis.grad_conflict import read_rows

    a = read_rows(os.path.join(one, "analysis", "grad_conflict_offline.csv"))
    b = read_rows(os.path.join(two, "analysis", "grad_conflict_offline.csv"))
    assert a and [(r["step"], r["pair"], r["group"]) for r in a] == [(r["step"], r["pair"], r["group"]) for r in b]
    assert [r["cosine"] for r in b] == pytest.approx([r["cosine"] for r in a], abs=1e-5)
