"""``launchers/pretrain.py --dry_run``: would this run start? Check everything, train nothing, write nothing.

The dry run resolves the recipe and DeepSpeed config as the real run would (``--set``, ``--resume``), runs
every pre-flight check of :mod:`negint_ds.train.preflight` collecting *all* problems, builds the model on
PyTorch's ``meta`` device (shapes only, no memory) for its θ/φ parameter counts, and reports the batch
layout, precision, ZeRO stage and meta-learning settings. ``target_device`` and ``world_size`` let a login
node without a GPU check a job meant for N GPUs. ``torch.distributed`` is never initialised.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

import torch

from ..config import precision, zero_stage
from ..data.vocab import PAD_ID
from ..meta.val_batches import resolve_val_micro
from ..problems import Problem
from .preflight import Checks, Preflight, run_preflight
from .setup import Prepared, RunArgs, check_checkpoint_matches

TARGET_DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ModelSummary:
    """Parameter counts of the model as the run would build it."""

    total: int
    theta: int
    #: φ_i per language id (0 for every language when the model has no language-specific parameters).
    phi: dict[str, int]
    vocab_size: int
    #: Where ``vocab_size`` came from: ``prepared vocabulary``, ``model.vocab_size`` or ``data.vocab.size``.
    vocab_from: str


@dataclass
class DryRun:
    """Everything the dry run found; ``problems`` empty means the run would start."""

    args: RunArgs
    preflight: Preflight
    target_device: str
    world_size: int
    model: ModelSummary | None = None
    #: Resolved windows per meta-validation micro-batch (None: meta off or the layout could not be resolved).
    val_micro: int | None = None

    @property
    def problems(self) -> list[Problem]:
        return self.preflight.problems

    @property
    def ok(self) -> bool:
        """True when the real run would start."""
        return not self.problems


def env_world_size() -> int:
    """World size from the launcher's environment (deepspeed/torchrun ``WORLD_SIZE``, or MPI's), else 1."""
    for var in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        v = os.environ.get(var, "")
        if v.isdigit() and int(v) > 0:
            return int(v)
    return 1


def dry_run(args: RunArgs, target_device: str = "auto", world_size: int | None = None) -> DryRun:
    """Check a run without training it: every problem, the model's size and the batch layout.

    Args:
        args: the launcher's arguments (``run_dir``, ``config``, ``deepspeed_config``, ``overrides``,
            ``resume``, ``overwrite``).
        target_device: ``cpu`` or ``cuda`` to check precision against that device; ``auto``: this machine.
        world_size: data-parallel processes to check the batch arithmetic for; None: :func:`env_world_size`.

    Returns:
        A :class:`DryRun`; nothing is written and no process group is started.

    Raises:
        ValueError: ``target_device`` or ``world_size`` is invalid.
    """
    if target_device not in TARGET_DEVICES:
        raise ValueError(f"target_device must be one of {TARGET_DEVICES}, got {target_device!r}")
    if target_device == "auto":
        target_device = "cuda" if torch.cuda.is_available() else "cpu"
    world = env_world_size() if world_size is None else world_size
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ValueError(f"world_size must be a positive integer, got {world!r}")
    pf = run_preflight(args, world, target_device == "cuda", strict=False)
    result = DryRun(args, pf, target_device, world)
    if pf.cfg is None:
        return result
    checks = Checks(strict=False, problems=pf.problems)
    if args.resume:
        _check_resume_state(pf, checks)
    result.model = _summarise_model(pf, checks)
    m = pf.cfg.meta
    if m.enabled and pf.ds_cfg is not None:
        result.val_micro = resolve_val_micro(m.val_batch_size, m.val_micro_batch,
                                             pf.ds_cfg["train_micro_batch_size_per_gpu"], world)[0]
    return result


def _check_resume_state(pf: Preflight, checks: Checks) -> None:
    """For a checkpoint written before manifests: what the real run checks once DeepSpeed has loaded it,
    taken from run.json (a manifest's identity is checked by the pre-flight itself)."""
    point = pf.resume
    if point is None or point.tag is None or point.manifest is not None or not os.path.isfile(pf.paths.meta) \
            or pf.train_streams is None:
        return  # no checkpoint: the run restarts from step 0; or the data did not check out (reported)
    with open(pf.paths.meta, encoding="utf-8") as f:
        recorded = json.load(f)
    prep = Prepared(pf.cfg, pf.ds_cfg, pf.paths, pf.manifest, pf.vocab, pf.train_streams, pf.valid_streams)
    checks.call(check_checkpoint_matches, recorded, prep)


def _summarise_model(pf: Preflight, checks: Checks) -> ModelSummary | None:
    """Build the model on the meta device (no memory) and count θ and each φ_i."""
    from ..model import build_model, count_parameters
    from ..params import split_parameters

    cfg = pf.cfg
    if cfg.model.vocab_size is not None:  # a mismatch with the vocabulary is reported by the pre-flight
        size, source = cfg.model.vocab_size, "model.vocab_size"
    elif pf.vocab is not None:
        size, source = pf.vocab.size, "prepared vocabulary"
    else:
        size, source = cfg.data.vocab.size, "data.vocab.size"
    try:
        with torch.device("meta"):
            model = build_model(cfg.model, size, len(cfg.lang_ids), PAD_ID, cfg.lang_ids)
        split = split_parameters(model, len(cfg.lang_ids))
    except (ValueError, RuntimeError) as e:  # the real run would crash here with a traceback
        checks.problems.append(Problem("config", f"model: cannot be built: {e}", "config"))
        return None
    count = lambda params: sum(p.numel() for p in params.values())  # noqa: E731
    return ModelSummary(count_parameters(model), count(split.theta),
                        {lang: count(phi) for lang, phi in zip(cfg.lang_ids, split.phi)}, size, source)


def format_report(result: DryRun) -> str:
    """The dry run's findings as a short human-readable report (problems are listed by :func:`format_problems`)."""
    pf, cfg, ds = result.preflight, result.preflight.cfg, result.preflight.ds_cfg
    rows = [("target", f"{result.target_device}, world size {result.world_size}"),
            ("run directory", _run_dir_status(result))]
    if cfg is not None:
        rows.append(("recipe", cfg.name))
        rows += _model_rows(cfg, result.model)
    if ds is not None:
        rows.append(("DeepSpeed config", pf.ds_source))
        mbs, gas, tbs = ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]
        procs = f"{result.world_size} process{'es' if result.world_size > 1 else ''}"
        batch = f"{mbs} micro x {gas} accumulation x {procs} = {tbs:,} sequences/step"
        if cfg is not None:
            batch += f"; {tbs * cfg.train.seq_len:,} tokens/step (seq_len {cfg.train.seq_len})"
        rows += [("batch", batch), ("precision", f"{precision(ds)}, ZeRO stage {zero_stage(ds)}")]
    if cfg is not None and cfg.meta.enabled:
        m = cfg.meta
        micro = "not resolved" if result.val_micro is None else str(result.val_micro)
        how = "meta.val_micro_batch" if m.val_micro_batch is not None else "derived"
        rows += [("meta", f"hypergradient {m.hypergradient}, precision {m.precision}, order {m.order}, "
                          f"phi_batch {m.phi_batch}"),
                 ("meta validation", f"{m.val_batch_size} sequences/language{_per_process(m, result.world_size)} "
                                     f"from {m.val_source}, micro-batch {micro} ({how})")]
    if cfg is not None:
        rows.append(("data", _data_status(pf)))
    verdict = "the run would start" if result.ok else f"the run would be refused ({len(result.problems)} problem(s))"
    rows.append(("verdict", verdict))
    width = max(len(k) for k, _ in rows)
    return "dry run: nothing trained, nothing written\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def format_problems(result: DryRun) -> str:
    """Every problem, one per line, with its category (empty string when there is none)."""
    return "\n".join(f"  - {p}" for p in result.problems)


def _model_rows(cfg, model: ModelSummary | None) -> list[tuple[str, str]]:
    mc = cfg.model
    arch = f"{mc.layers} layers, d={mc.dim}, FFN {mc.ffn_dim}, {mc.heads} heads"
    if model is None:
        return [("model", f"{arch}; not built (see the problems)")]
    rows = [("model", f"{arch}, vocab {model.vocab_size:,} ({model.vocab_from}): {model.total:,} parameters "
                      f"({model.total * 4 / 2 ** 20:,.1f} MiB in fp32)"),
            ("θ (DeepSpeed)", f"{model.theta:,} parameters")]
    if any(model.phi.values()):
        kinds = list(mc.language_specific) + (["language adapters"] if mc.adapters.kind == "language" else [])
        per_lang = ", ".join(f"{lang} {n:,}" for lang, n in model.phi.items())
        rows.append(("φ per language", f"{per_lang} ({', '.join(kinds)})"))
    else:
        rows.append(("φ per language", "none (no language-specific parameters)"))
    return rows


def _per_process(m, world: int) -> str:
    return f" ({m.val_batch_size // world} per process)" if world > 1 and m.val_batch_size % world == 0 else ""


def _run_dir_status(result: DryRun) -> str:
    paths, args = result.preflight.paths, result.args
    if any(p.category == "run_dir" for p in result.problems):
        return f"{paths.root}: refused (see the problems)"
    if args.resume:
        point = result.preflight.resume
        return f"{paths.root}: {point.describe() if point else 'resumed'}"
    if args.overwrite and paths.exists():
        return f"{paths.root}: its earlier run would be deleted (--overwrite)"
    return f"{paths.root}: would be created"


def _data_status(pf: Preflight) -> str:
    cfg = pf.cfg
    where = os.path.abspath(cfg.data.dir)
    if pf.train_streams is not None:
        tokens = ", ".join(f"{lang} {tr.num_tokens:,}/{va.num_tokens:,}"
                           for lang, tr, va in zip(cfg.lang_ids, pf.train_streams, pf.valid_streams))
        return f"{where}: prepared, vocabulary {pf.vocab.size:,} pieces; train/valid tokens {tokens}"
    if pf.manifest is None:
        return f"{where}: not prepared for this recipe (see the problems)"
    return f"{where}: prepared, but not usable (see the problems)"


def main(args: RunArgs) -> int:
    """Print the report (on rank 0 of a launched job) and return the exit code: 0 would start, 2 refused."""
    result = dry_run(args, args.target_device, args.world_size)
    rank = next((os.environ[v] for v in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK") if v in os.environ), "0")
    if rank.strip() in ("", "0"):  # every rank finds the same; one report is enough
        print(format_report(result), flush=True)
        if not result.ok:
            print(f"error: the run would be refused; every problem:\n{format_problems(result)}", file=sys.stderr,
                  flush=True)
    return 0 if result.ok else 2


__all__ = ["DryRun", "ModelSummary", "TARGET_DEVICES", "dry_run", "env_world_size", "format_problems",
           "format_report", "main"]
