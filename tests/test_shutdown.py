"""Clean endings: the prefetch thread and gloo's worker threads are gone before the interpreter finalises.

A gloo worker thread alive at interpreter exit can abort the process after a run that wrote every file
(exit 6 under mpiexec, "terminate called without an active exception"); a prefetch thread that cannot
stop would hang ``close``.
"""
import json
import subprocess
import sys
import time

import torch

from conftest import child_env, find_tool, free_port
from negint_ds.mlm import MLMBatch
from negint_ds.train.prefetch import Prefetcher


class _Steps:
    """Stands in for TrainBatches: step s gives language s % 3 and one batch whose every tensor holds s."""

    def __init__(self, fail_at: int | None = None):
        self.fail_at = fail_at

    def step(self, s: int):
        if s == self.fail_at:
            raise RuntimeError(f"corrupt window at step {s}")
        t = torch.full((2,), s)
        return s % 3, [MLMBatch(t, t, t, t)]


def test_prefetcher_yields_steps_in_order_then_close_joins_worker():
    p = Prefetcher(_Steps(), start=5, stop=12, depth=2)
    for s in range(5, 12):
        lang, mbs = p.get(s)
        assert lang == s % 3 and int(mbs[0].input_ids[0]) == s
    p.close()
    assert not p._thread.is_alive()


def test_prefetcher_close_returns_while_queue_is_full():
    p = Prefetcher(_Steps(), start=0, stop=1000, depth=2)
    time.sleep(0.3)  # the worker fills the queue and waits on it
    t0 = time.perf_counter()
    p.close()
    assert not p._thread.is_alive()
    assert time.perf_counter() - t0 < 2.0  # the worker polls its halt flag every 0.1 s


def test_prefetcher_surfaces_worker_error_and_still_closes():
    p = Prefetcher(_Steps(fail_at=3), start=0, stop=10, depth=1)
    for s in range(3):
        p.get(s)
    try:
        p.get(3)
    except RuntimeError as e:
        assert "corrupt window at step 3" in str(e)
    else:
        raise AssertionError("the worker's error was not raised by get()")
    p.close()
    assert not p._thread.is_alive()


_GLOO_CHILD = """
import json, os, sys
import torch, torch.distributed as dist
from negint_ds.train.dist import shutdown_distributed

def runloops():
    names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
    return sum(n.startswith("pt_gloo_runloop") for n in names)

dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[1], rank=0, world_size=1)
dist.all_reduce(torch.ones(4))
before = runloops()
shutdown_distributed()
print(json.dumps({"before": before, "after": runloops(), "initialized": dist.is_initialized()}))
"""


def test_shutdown_distributed_joins_gloo_worker_threads():
    # a fresh process: other tests leave this one's default process group initialised
    p = subprocess.run([sys.executable, "-c", _GLOO_CHILD, str(free_port())], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["before"] > 0, "gloo started no worker threads: the check would prove nothing"
    assert got == {"before": got["before"], "after": 0, "initialized": False}


_FAILING_RANK = """
import torch, torch.distributed as dist
from negint_ds.train.dist import fail_fast, init_distributed, shutdown_distributed

rank, world = init_distributed()  # DeepSpeed's MPI discovery: mpi4py will MPI_Finalize at exit
dist.all_reduce(torch.ones(4))  # gloo's worker threads are running from here on
with fail_fast(world):
    if rank == 1:
        {}["step"]  # a bug on one rank only (CI: a half-written CSV read by rank 1)
    dist.barrier()  # rank 0 waits for a peer that is gone
shutdown_distributed()
"""


def test_fail_fast_ends_an_mpiexec_job_whose_one_rank_fails():
    """An exception on rank 1 of 2 ends the job (non-zero, traceback kept) in seconds. Without ``fail_fast``
    rank 1's exit waits in MPI_Finalize for rank 0, which waits in gloo's barrier for rank 1: the job hangs
    until gloo's 30-minute timeout (CI: 600 s, then killed), and this test times out."""
    exe = find_tool("mpiexec")
    assert exe, f"mpiexec not found next to {sys.executable} or on PATH (pip install mpich mpi4py)"
    p = subprocess.run([exe, "-n", "2", sys.executable, "-c", _FAILING_RANK], capture_output=True, text=True,
                       timeout=120, env=child_env(MASTER_PORT=str(free_port())))
    assert p.returncode != 0, p.stderr[-2000:]
    assert "KeyError: 'step'" in p.stderr, p.stderr[-2000:]


def test_fail_fast_leaves_one_process_and_expected_errors_alone():
    from negint_ds.train.dist import fail_fast

    for world, expected in ((1, ()), (2, (KeyError,))):
        try:
            with fail_fast(world, expected):
                {}["step"]
        except KeyError:
            pass
        else:
            raise AssertionError(f"fail_fast({world}, {expected}) swallowed the exception")
