"""Gradient conflict over a finished (or running) run's saved checkpoints: the offline mode of the probe.

The same probe as during training (:func:`negint_ds.analysis.grad_conflict.probe`, same seeds), on each
checkpoint's fp32 weights, so a checkpoint at step s reproduces the online probe's row at step s. Rows go to
``<run>/analysis/grad_conflict_offline.csv`` (checkpoints already there are skipped: resumable) with the
figure ``grad_conflict_offline.png``. Under ``deepspeed``/``mpiexec`` with N processes each rank computes its
share of every effective batch and the gradients are summed with one all-reduce, as online.
"""
from __future__ import annotations

import json
import logging
import os
import sys

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..config import GradConflictConfig
from ..data.vocab import N_SPECIAL
from ..params import split_parameters
from .grad_conflict import ProbeBatches, plot, probe, read_rows, write_rows
from .pretrained import AnalysisError, checkpoint_state, checkpoint_tags, load_pretrained

log = logging.getLogger("negint_ds")


def _rank0_rows(path: str, rank: int, world: int) -> list[dict]:
    """The CSV's rows as rank 0 reads them, on every rank.

    Only rank 0 appends to the CSV, so another rank reading it could see a half-written line (CI: a header
    cut short, ``KeyError: 'step'`` on rank 1 while rank 0 waited in the next collective). Broadcasting rank 0's
    view also keeps every rank's list of checkpoints to probe identical, which the all-reduce needs.
    """
    distributed = world > 1 and dist.is_initialized()
    if distributed:
        dist.barrier()  # rank 0's last append is complete before it reads
    box = [read_rows(path) if rank == 0 else None]
    if distributed:
        dist.broadcast_object_list(box, src=0)
    return box[0]


def _batch_layout(run_dir: str) -> tuple[int | None, int | None]:
    """(training micro-batch, sequences per optimiser step) of the run, from its ``ds_config.json`` and the world
    size it last ran with (``run.json``); None where a file or field is missing."""
    try:
        with open(os.path.join(run_dir, "ds_config.json"), encoding="utf-8") as f:
            ds = json.load(f)
    except (OSError, ValueError):
        return None, None
    micro = ds.get("train_micro_batch_size_per_gpu")
    if "train_batch_size" in ds:
        return micro, int(ds["train_batch_size"])
    try:
        with open(os.path.join(run_dir, "run.json"), encoding="utf-8") as f:
            world = int(json.load(f)["sessions"][-1]["world_size"])
    except (OSError, KeyError, ValueError, IndexError):
        return micro, None
    return micro, int(micro) * int(ds.get("gradient_accumulation_steps", 1)) * world if micro else None


def offline_grad_conflict(run_dir: str, cfg: GradConflictConfig, tags: list[str] | None = None,
                          device: torch.device | str = "cpu", rank: int = 0, world: int = 1,
                          progress: bool = True) -> list[dict]:
    """Probe every checkpoint of ``run_dir`` (or those in ``tags``) and append the rows to the offline CSV.

    Args:
        cfg: probe settings (``sequences``, ``micro_batch`` — default: the run's training micro-batch —,
            ``controls``, ``dropout``); ``enabled`` and ``every`` are ignored.
        tags: checkpoint tags (``step_00000120``); None: every complete checkpoint, oldest first.
        rank / world: this process in an initialised ``torch.distributed`` group (a collective when world > 1).

    Returns:
        Every row of the CSV after the run (earlier checkpoints' rows included).

    Raises:
        AnalysisError: no checkpoints, an unknown tag, a control language the run lacks, or a sequence count that
            is not a multiple of the micro-batch.
    """
    available = checkpoint_tags(run_dir)
    if not available:
        raise AnalysisError(f"{run_dir} has no complete checkpoints to probe (checkpoints/step_*/)")
    if tags is not None:
        unknown = sorted(set(tags) - {t for _, t in available})
        if unknown:
            raise AnalysisError(f"{run_dir}: no checkpoint {unknown}; it has {[t for _, t in available]}")
        available = [(s, t) for s, t in available if t in set(tags)]
    out_dir = os.path.join(os.path.abspath(run_dir), "analysis")
    path = os.path.join(out_dir, "grad_conflict_offline.csv")
    done = {(r["step"], r["sequences"]) for r in _rank0_rows(path, rank, world)}
    device = torch.device(device)
    micro_default, global_batch = _batch_layout(run_dir)
    micro = cfg.micro_batch or micro_default or 32
    if cfg.sequences % micro:
        raise AnalysisError(f"--sequences {cfg.sequences} is not a multiple of the micro-batch {micro} (--micro_batch)")
    todo = [(s, t) for s, t in available if (s, cfg.sequences) not in done]
    pre = batches = None
    for step, tag in tqdm(todo, desc="gradient conflict", unit="checkpoint",
                          disable=not progress or rank != 0 or not sys.stderr.isatty()):
        if pre is None:  # recipe, vocabulary and token streams (checksummed) once; then only each step's weights
            pre = load_pretrained(run_dir, checkpoint=tag)
            for c in cfg.controls or []:
                pre.lang_index(c)
            model = pre.model.to(device)
            split = split_parameters(model, len(pre.lang_ids))
            tc = pre.cfg.train
            batches = ProbeBatches([pre.stream(lang, "train") for lang in pre.lang_ids], tc.seq_len, micro,
                                   pre.cfg.mlm, pre.vocab.size, pre.vocab.mask_id, N_SPECIAL, tc.seed)
            tokens = sum(s.num_tokens for s in batches.streams)
        else:
            model.load_state_dict(checkpoint_state(run_dir, tag))
        theta = {n: p.detach() for n, p in split.theta.items()}
        rows = probe(model, theta, {}, batches, step, pre.lang_ids, cfg, device, rank, world)
        epoch = step * global_batch * tc.seq_len / tokens if global_batch else float("nan")
        for r in rows:
            r["epoch"] = epoch
        if rank == 0:
            write_rows(path, rows)
            log.info("%s (step %d): %s", tag, step,
                     "  ".join(f"{r['pair']} {r['cosine']:+.3f}" for r in rows if r["group"] == "all"))
    rows = _rank0_rows(path, rank, world)
    if rank == 0 and rows:
        plot(rows, os.path.join(out_dir, "grad_conflict_offline.png"),
             f"{os.path.basename(os.path.abspath(run_dir))}: θ-gradient similarity at checkpoints")
    return rows


__all__ = ["offline_grad_conflict"]
