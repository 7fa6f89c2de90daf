"""Process-group helpers: DeepSpeed's init (deepspeed launcher, mpirun via mpi4py, or one plain process)."""
from __future__ import annotations

import os

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
    return dist.get_rank(), dist.get_world_size()


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
    t = torch.tensor([rank if failed else world_size], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    v = int(t.item())
    return v if v < world_size else None


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a small list of floats over all ranks (float64 so counts stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def all_reduce_mean_(tensors: list[torch.Tensor], world_size: int) -> None:
    """Average tensors over all ranks in place with one collective per dtype (no-op for one process)."""
    if world_size <= 1 or not tensors:
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = _flatten_dense_tensors(group)
        dist.all_reduce(flat)
        flat /= world_size
        for t, f in zip(group, _unflatten_dense_tensors(flat, group)):
            t.copy_(f)
