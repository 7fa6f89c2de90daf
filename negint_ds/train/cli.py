"""Command line of ``launchers/pretrain.py`` (run it with ``deepspeed``, ``mpirun`` or plain ``python``)."""
from __future__ import annotations

import argparse
import sys

from .preflight import USER_ERRORS
from .setup import RESUMABLE_OVERRIDES, RunArgs


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def parse_args(argv: list[str] | None = None) -> RunArgs:
    """The launcher's command line (``argv`` default: ``sys.argv[1:]``) as :class:`RunArgs`; exits 2 on bad usage."""
    import deepspeed

    p = argparse.ArgumentParser(
        prog="launchers/pretrain.py",
        description="Pretrain an XLM-style multilingual MLM with DeepSpeed. Example: deepspeed launchers/pretrain.py "
                    "--deepspeed_config ds_configs/cpu_zero2.json --config jointpair_en_sw_demo --run_dir runs/demo")
    p.add_argument("--config", help="recipe YAML/JSON or built-in recipe name (negint_ds/recipes); "
                                    "optional with --resume")
    p.add_argument("--run_dir", required=True, help="run directory (created; refused if it exists unless "
                                                    "--resume or --overwrite)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set train.max_steps=200 (repeatable). On --resume only "
                        f"{sorted(RESUMABLE_OVERRIDES)}")
    p.add_argument("--resume", action="store_true", help="continue the run in --run_dir from its latest checkpoint")
    p.add_argument("--resume_from", metavar="TAG", default=None,
                   help="with --resume: continue from this checkpoint (e.g. step_00000120) instead of the newest one "
                        "that verifies; newer checkpoints are moved to checkpoints/quarantine/")
    p.add_argument("--overwrite", action="store_true", help="delete an existing --run_dir and start over")
    p.add_argument("--no_progress", action="store_true", help="no progress bar; log lines instead")
    p.add_argument("--dry_run", action="store_true",
                   help="check everything the run would check (recipe, DeepSpeed config, --set, --resume, run "
                        "directory, data, meta batch layout), build the model on the meta device and print a "
                        "report; train nothing, write nothing. Exit 0: the run would start; 2: it would be "
                        "refused (every problem listed)")
    p.add_argument("--target_device", choices=["auto", "cpu", "cuda"], default=None,
                   help="with --dry_run: check precision as if on this device (default auto: this machine), "
                        "e.g. a GPU job from a login node without a GPU")
    p.add_argument("--world_size", type=_positive_int, default=None,
                   help="with --dry_run: check the batch arithmetic for N processes (default: $WORLD_SIZE of "
                        "the launcher, else 1)")
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    p = deepspeed.add_config_arguments(p)
    a = p.parse_args(argv)
    if a.resume_from is not None and not a.resume:
        p.error("--resume_from needs --resume")
    if not a.dry_run and (a.target_device is not None or a.world_size is not None):
        p.error("--target_device and --world_size apply to --dry_run only (a real run uses this machine and the "
                "launcher's world size)")
    return RunArgs(run_dir=a.run_dir, config=a.config, deepspeed_config=a.deepspeed_config, overrides=a.overrides,
                   resume=a.resume, overwrite=a.overwrite, progress=not a.no_progress, dry_run=a.dry_run,
                   target_device=a.target_device or "auto", world_size=a.world_size, resume_from=a.resume_from)


def main(argv: list[str] | None = None) -> int:
    """Parse, check everything, train (with ``--dry_run``: check and report only).

    Returns:
        The process exit code: 0 done (dry run: the run would start), 2 bad input (nothing written).
    """
    args = parse_args(argv)
    if args.dry_run:
        from .dry_run import main as dry_run_main

        return dry_run_main(args)  # no process group: nothing to agree on, and no GPU needed
    from .dist import configure_cpu_threads, fail_fast, init_distributed, shutdown_distributed

    rank, world = init_distributed()
    configure_cpu_threads(world)
    with fail_fast(world):
        code = _run(args, rank, world)
    # only after a normal end: after an exception a peer may be gone, and a barrier would wait forever
    shutdown_distributed()
    return code


def _run(args: RunArgs, rank: int, world: int) -> int:
    """Check the input on every rank, then train; 0 on success (or nothing left to train), 2 on bad input
    (nothing written), 3 when training diverged (``train.nonfinite``)."""
    from .dist import first_failing_rank
    from .nonfinite import NonFiniteError
    from .setup import prepare_run
    from .trainer import Trainer

    error = None
    try:
        prep = prepare_run(args, world)
    except Exception as e:  # agreed on below, so that no rank is left waiting in a collective
        error = e
    # Every rank checks before any rank writes; they must agree, or a slow rank would see the run
    # directory that a fast rank has just created and refuse it.
    first_bad = first_failing_rank(error is not None, rank, world)
    if first_bad is not None:
        if error is not None and not isinstance(error, USER_ERRORS):
            raise error  # a bug or an I/O failure: keep the traceback
        if rank == first_bad:
            print(f"error: {error}", file=sys.stderr)
        return 2
    done = _already_done(prep)
    if done:
        if rank == 0:
            print(done, file=sys.stderr)
        return 0
    from ..analysis.grad_conflict_callback import analysis_callbacks

    trainer = Trainer(prep, rank, world, args.resume, args.overwrite, args.progress,
                      callbacks=analysis_callbacks(prep.cfg))
    try:
        trainer.train()
    except NonFiniteError as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return 3
    return 0


def _already_done(prep) -> str | None:
    """The message for a ``--resume`` with nothing left to do (nothing is written then), else None.

    A run whose checkpoint is past ``train.max_steps`` cannot go back; one exactly at it is finished when
    its export and final report exist (otherwise the resume writes them).
    """
    import os

    point, max_steps = prep.resume, prep.cfg.train.max_steps
    if point is None or point.tag is None or point.step < max_steps:
        return None
    if point.step > max_steps:
        return (f"{prep.paths.root} is already at step {point.step} (checkpoint {point.tag}), past train.max_steps="
                f"{max_steps}; nothing to train. Raise train.max_steps (--set train.max_steps=N) to continue it")
    finished = all(os.path.isfile(p) for p in (os.path.join(prep.paths.export, "model.safetensors"),
                                               prep.paths.final_json))
    if finished:
        return (f"{prep.paths.root} already finished at step {point.step} = train.max_steps; nothing to do. "
                f"Raise train.max_steps (--set train.max_steps=N) to train further")
    return None
