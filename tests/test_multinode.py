"""Multi-node without a cluster: two DeepSpeed launchers on this machine act as two nodes of one job.

**No-ssh mode** (what a scheduler such as SLURM does: every node starts its own launcher). DeepSpeed 0.19.8's
``deepspeed`` command takes the node list from a hostfile even then: without one, ``--num_nodes 2`` is refused
("Num nodes is >1 but no extra nodes available via hostfile"). With ``--no_ssh`` the host names are never
contacted; the hostfile only gives the number of nodes and the processes per node (``slots``), so every node
is started with the same hostfile and arguments and its own ``--node_rank``::

    deepspeed --hostfile H --num_nodes 2 --node_rank R --master_addr 127.0.0.1 --master_port P --no_ssh \
        launchers/pretrain.py ...   # R = 0 and R = 1, both on this machine; H: "node0 slots=1", "node1 slots=1"

Node R's launcher starts its processes with RANK = R × slots + local rank, WORLD_SIZE = all slots,
LOCAL_SIZE = its own slots; rank 0 (node 0) hosts the rendezvous on 127.0.0.1:P. Both nodes share the run
directory as a shared filesystem would (rank 0 writes the run's files, every rank its ZeRO shard).

**Hostfile mode** (one ``deepspeed`` command starts every node). The default backend, pdsh over passwordless
ssh, cannot be exercised here: there is no pdsh and no ssh server. The MPICH backend can: with
``--launcher mpich`` DeepSpeed runs ``mpirun -n 2 -ppn 1 -hosts localhost,127.0.0.1``, and MPICH's Hydra
starts the processes for both (local) hosts without ssh; ``--no_ssh_check`` and ``--master_addr`` keep the
runner from ssh-ing to the first host itself.

Each node believes it has the machine to itself (LOCAL_SIZE 1), so the children get OMP_NUM_THREADS=1: two
2-thread processes on 2 cores would thrash. Both runs are compared with one process accumulating the same
two micro-batches, to the tolerances of ``test_distributed.py``.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import LAUNCHER, REPO, child_env, free_port, load_export, read_metrics, run_launcher, write_ds_config

pytestmark = pytest.mark.slow
BIN = os.path.dirname(sys.executable)
# as test_distributed.py: an all-reduce of 2 ranks vs accumulation of 2 micro-batches changes fp32 rounding only
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-5
TIMEOUT = 240


def _deepspeed() -> str:
    exe = os.path.join(BIN, "deepspeed")
    if not os.path.isfile(exe):
        pytest.fail(f"deepspeed not found next to {sys.executable} (pip install deepspeed)")
    return exe


def _args(tiny_data, ds, run):
    return ["--no_progress", "--deepspeed_config", ds, "--config", tiny_data["recipe"], "--run_dir", run,
            "--set", "train.max_steps=8", "--set", "train.eval_every=4"]


def _env() -> dict:
    # mpirun must be found next to this Python (the deepspeed runner looks it up on PATH)
    return child_env(OMP_NUM_THREADS="1", PATH=BIN + os.pathsep + os.environ.get("PATH", ""))


def _tail(path: str, n: int = 4000) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()[-n:]


def _run_together(cmds: list[list[str]], logs: list[str], timeout: int = TIMEOUT) -> list[int | None]:
    """Start every command at once (each in its own session, output to its log) and wait for all of them.

    As soon as one fails, the others get 10 s to end (a node whose peer died waits in the rendezvous or in a
    collective), then they, and whatever they started, are killed; so are all of them at ``timeout``.
    Returns the exit codes (None: killed).
    """
    procs = []
    try:
        for cmd, log in zip(cmds, logs):
            with open(log, "w", encoding="utf-8") as out:
                procs.append(subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                break
            if any(c not in (None, 0) for c in codes):
                deadline = min(deadline, time.monotonic() + 10)
            time.sleep(0.2)
        return [p.poll() for p in procs]
    finally:
        for p in procs:
            try:  # the launcher, the processes it spawned and anything they left behind
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def _launch(make_cmds, logs: list[str], run: str) -> list[int | None]:
    """Run the commands ``make_cmds(port)`` together; retry on a fresh port (and a clean ``run`` directory) only
    when the rendezvous port was taken between our probe and its bind."""
    for _ in range(3):
        shutil.rmtree(run, ignore_errors=True)
        codes = _run_together(make_cmds(str(free_port())), logs)
        if codes == [0] * len(codes) or not any("EADDRINUSE" in _tail(log, 10 ** 6) for log in logs):
            break
    return codes


def _failure(codes, logs) -> str:
    return f"exit codes {codes}\n" + "\n".join(f"===== {os.path.basename(log)} (tail) =====\n{_tail(log)}"
                                               for log in logs)


def _compare(run, ref):
    a, b = read_metrics(ref, "train"), read_metrics(run, "train")
    assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, 9))
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=LOSS_RTOL)
    va, vb = read_metrics(ref, "valid"), read_metrics(run, "valid")
    assert [r["step"] for r in vb] == [r["step"] for r in va]
    for lang in ("en", "sw"):
        assert [r[f"ppl_{lang}"] for r in vb] == pytest.approx([r[f"ppl_{lang}"] for r in va], rel=LOSS_RTOL)
    wa, wb = load_export(ref), load_export(run)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < WEIGHT_ATOL


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    """One process, micro-batch 4 × accumulation 2: the global batch of 2 nodes × 1 process × micro-batch 4."""
    d = tmp_path_factory.mktemp("multinode")
    run = str(d / "one_process")
    p = run_launcher(_args(tiny_data, write_ds_config(str(d / "acc2.json"), micro=4, accum=2), run)[1:])
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    return run, d


def test_two_nodes_no_ssh_match_one_process(tiny_data, reference):
    ref, d = reference
    ds = write_ds_config(str(d / "per_node.json"), micro=4, accum=1)
    hostfile = d / "hostfile_no_ssh"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")  # names never contacted under --no_ssh
    run = str(d / "two_nodes")
    logs = [str(d / f"node{r}.log") for r in (0, 1)]

    def cmds(port):
        return [[_deepspeed(), "--hostfile", str(hostfile), "--num_nodes", "2", "--node_rank", str(r),
                 "--master_addr", "127.0.0.1", "--master_port", port, "--no_ssh", LAUNCHER, *_args(tiny_data, ds, run)]
                for r in (0, 1)]

    codes = _launch(cmds, logs, run)
    assert codes == [0, 0], _failure(codes, logs)
    node0, node1 = _tail(logs[0], 10 ** 6), _tail(logs[1], 10 ** 6)
    assert "nnodes=2, num_local_procs=1, node_rank=1" in node1, _failure(codes, logs)
    assert "'node1': [1]" in node1 and "dist_world_size=2" in node0, _failure(codes, logs)
    assert "2 process(es)" in node0, _failure(codes, logs)
    _compare(run, ref)


def test_hostfile_mpich_launcher_matches_one_process(tiny_data, reference):
    ref, d = reference
    ds = write_ds_config(str(d / "per_host.json"), micro=4, accum=1)
    hostfile = d / "hostfile_local"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")  # two host names for this machine
    run = str(d / "hostfile_run")
    logs = [str(d / "hostfile_run.log")]

    def cmds(port):
        return [[_deepspeed(), "--hostfile", str(hostfile), "--launcher", "mpich", "--no_ssh_check",
                 "--master_addr", "127.0.0.1", "--master_port", port, LAUNCHER, *_args(tiny_data, ds, run)]]

    codes = _launch(cmds, logs, run)
    assert codes == [0], _failure(codes, logs)
    out = _tail(logs[0], 10 ** 6)
    assert "-ppn 1" in out and "-hosts localhost,127.0.0.1" in out, _failure(codes, logs)
    assert "2 process(es)" in out, _failure(codes, logs)
    _compare(run, ref)
