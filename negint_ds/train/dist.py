"""Process-group helpers: DeepSpeed's init (deepspeed launcher, mpirun via mpi4py, or one plain process)."""
from __future__ import annotations

import contextlib
import os
import sys
import traceback

import torch
import torch.distributed as dist


def init_distributed() -> tuple[int, int]:
    """Initialise torch.distributed through DeepSpeed: NCCL on GPU, gloo on CPU; return (rank, world size).

    DeepSpeed discovers rank/world size from the ``deepspeed`` launcher's environment, from MPI via
    mpi4py under ``mpirun``/``mpiexec`` (``auto_mpi_discovery``), or runs a single process. Under MPI
    discovery DeepSpeed sets MASTER_PORT itself; we hand it ``$MASTER_PORT`` (default 29500) so that
    several jobs can share a node.
    """
    import deepspeed

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    port = int(os.environ.get("MASTER_PORT", "29500"))
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=True, distributed_port=port)
    if torch.cuda.is_available():
        # before any collective: NCCL needs each local rank on its own GPU (DeepSpeed sets it only later,
        # in deepspeed.initialize); LOCAL_RANK comes from the launcher or from DeepSpeed's MPI discovery
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return dist.get_rank(), dist.get_world_size()


def collective_device() -> torch.device:
    """Where small collective tensors live: the current GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def local_world_size(world_size: int) -> int:
    """Processes on this node, from launcher/MPI environment variables (default: ``world_size``)."""
    for var in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        v = os.environ.get(var, "")
        if v.isdigit() and int(v) > 0:
            return int(v)
    return world_size


def configure_cpu_threads(world_size: int) -> int:
    """On CPU, give each local process an equal share of cores (2 processes × 2 threads on 2 cores thrash).

    Returns the thread count set (unchanged when CUDA is used or OMP_NUM_THREADS is set by the user).
    """
    if torch.cuda.is_available() or "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    n = max(1, (os.cpu_count() or 1) // local_world_size(world_size))
    torch.set_num_threads(n)
    return n


def first_failing_rank(failed: bool, rank: int, world_size: int) -> int | None:
    """The lowest rank that reported ``failed`` (None if none did); a collective: every rank must call it."""
    if world_size <= 1 or not dist.is_initialized():
        return rank if failed else None
    t = torch.tensor([rank if failed else world_size], dtype=torch.int64, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    v = int(t.item())
    return v if v < world_size else None


def on_rank0(fn, rank: int, world_size: int):
    """Run ``fn`` on rank 0 only (file writes), then let every rank learn whether it failed.

    A collective: call it on all ranks. Without it, an exception on rank 0 (disk full, permissions)
    would leave the other ranks waiting in the next collective until the backend's timeout.

    Returns:
        ``fn()``'s result on rank 0, None elsewhere.

    Raises:
        The exception on rank 0; RuntimeError on the other ranks when rank 0 failed.
    """
    result, error = None, None
    if rank == 0:
        try:
            result = fn()
        except Exception as e:  # re-raised below, after every rank knows
            error = e
    if first_failing_rank(error is not None, rank, world_size) is not None:
        if error is not None:
            raise error
        raise RuntimeError("rank 0 failed while writing to the run directory (see its error); stopping")
    return result


def shutdown_distributed() -> None:
    """Wait for every rank, then tear the process group down while the interpreter is still alive.

    Call on every rank on the way out of a run that ended normally. Without it, gloo's worker threads
    outlive ``main``: a worker that releases a finished collective's tensor during interpreter
    finalisation must take the GIL, Python ends that thread, and the process aborts with "terminate
    called without an active exception" (seen about once in 12 two-process ``mpiexec`` runs, after
    every file had been written). ``destroy_process_group`` joins those threads first.
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def fail_fast(world_size: int, expected: tuple[type[BaseException], ...] = ()):
    """Around a process group's work: an exception escaping on one rank ends that process at once (exit 1).

    With gloo's threads alive, a rank whose exception propagates out of ``main`` does not exit (interpreter
    finalisation blocks), so its peers wait in their next collective until the backend timeout (CI: an
    ``mpiexec -n 2`` analysis hung 600 s after ``KeyError`` on rank 1). ``os._exit`` after printing the
    traceback lets ``mpiexec``/the ``deepspeed`` launcher see the failure and stop the other ranks.
    Expected errors are handled inside (named error, exit 2); this is for bugs and I/O failures.
    ``expected`` (the caller's named-error types) and one process: the exception propagates as usual.
    """
    try:
        yield
    except Exception as e:
        if world_size <= 1 or isinstance(e, expected):
            raise
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a small list of floats over all ranks (float64 so counts stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def all_reduce_(tensors: list[torch.Tensor], world_size: int, mean: bool = True, group=None,
                bucket_elements: int = 1 << 24) -> None:
    """Sum (or, with ``mean``, average) tensors over the ranks of ``group`` in place; no-op for one process.

    Tensors are flattened into buckets of at most ``bucket_elements`` per dtype, one collective per bucket,
    so a θ-sized list (the meta step's g and v, or θ's fp32 masters) costs one extra bucket of memory, not a
    second copy of θ.
    """
    if world_size <= 1 or not tensors:
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    buckets: list[list[torch.Tensor]] = []
    open_bucket: dict[torch.dtype, tuple[list[torch.Tensor], list[int]]] = {}
    for t in tensors:
        bucket, size = open_bucket.setdefault(t.dtype, ([], [0]))
        if bucket and size[0] + t.numel() > bucket_elements:
            buckets.append(bucket)
            bucket, size = open_bucket[t.dtype] = ([], [0])
        bucket.append(t)
        size[0] += t.numel()
    buckets += [b for b, _ in open_bucket.values() if b]
    for bucket in buckets:
        flat = _flatten_dense_tensors(bucket)
        dist.all_reduce(flat, group=group)
        if mean:
            flat /= world_size
        for t, f in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
            t.copy_(f)


def all_reduce_mean_(tensors: list[torch.Tensor], world_size: int) -> None:
    """Average tensors over all ranks in place (no-op for one process); see :func:`all_reduce_`."""
    all_reduce_(tensors, world_size)
