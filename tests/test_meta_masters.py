"""``meta.precision: fp32`` reads DeepSpeed's fp32 master weights (bf16 engines on CPU), assembled across ranks."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, child_env, free_port

WORKER = os.path.join(REPO, "tests", "masters_worker.py")


def run(stage, n, out):
    if n == 1:
        cmd = [sys.executable, WORKER, str(stage), str(out)]
    else:
        mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
        if mpiexec is None:
            pytest.fail("mpiexec not found: install the test extras (pip install -e '.[test]')")
        cmd = [mpiexec, "-n", str(n), sys.executable, WORKER, str(stage), str(out)]
    for _ in range(3):
        env = child_env(MASTER_PORT=str(free_port()), MASTER_ADDR="127.0.0.1")
        if n == 1:
            env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
        # another process can take the probed port before the rendezvous binds it: only then, retry
        if p.returncode == 0 or "EADDRINUSE" not in p.stderr + p.stdout:
            break
    results = [json.load(open(out / f)) for f in sorted(os.listdir(out))]
    assert p.returncode == 0 and len(results) == n, p.stdout[-2000:] + p.stderr[-3000:]
    return results


@pytest.mark.parametrize("stage, source", [(0, "fp32 groups"), (1, "high-precision mapping"),
                                           (2, "high-precision mapping")])
def test_fp32_theta_is_deepspeeds_master_copy(stage, source, tmp_path):
    (r,) = run(stage, 1, tmp_path)
    assert source in r["source"] and r["all_fp32"] and r["equal_masters"], r
    assert r["finer_than_bf16"] > 0 and r["rounds_to_working"], "masters carry digits the bf16 copy rounds away"
    assert r["working_dtype"] == "torch.bfloat16"


@pytest.mark.slow
def test_partitioned_masters_are_assembled_on_every_rank(tmp_path):
    """ZeRO-2 over 2 processes: each rank holds half the masters; every rank gets all of θ in fp32."""
    results = run(2, 2, tmp_path)
    assert all(r["equal_masters"] and r["all_fp32"] and "high-precision" in r["source"] for r in results), results
