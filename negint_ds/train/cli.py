"""Command line of ``launchers/pretrain.py`` (run it with ``deepspeed``, ``mpirun`` or plain ``python``)."""
from __future__ import annotations

import argparse
import sys

from ..config import ConfigError
from ..data.batches import DataError
from ..data.binarized import BinarizedError
from ..data.prepare import DataPrepError
from ..data.vocab import VocabularyError
from .run_dir import RunDirError
from .setup import RESUMABLE_OVERRIDES, RunArgs

USER_ERRORS = (ConfigError, DataPrepError, DataError, VocabularyError, BinarizedError, RunDirError)


def parse_args(argv: list[str] | None = None) -> RunArgs:
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
    p.add_argument("--overwrite", action="store_true", help="delete an existing --run_dir and start over")
    p.add_argument("--no_progress", action="store_true", help="no progress bar; log lines instead")
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    p = deepspeed.add_config_arguments(p)
    a = p.parse_args(argv)
    return RunArgs(run_dir=a.run_dir, config=a.config, deepspeed_config=a.deepspeed_config, overrides=a.overrides,
                   resume=a.resume, overwrite=a.overwrite, progress=not a.no_progress)


def main(argv: list[str] | None = None) -> int:
    """Parse, check everything, train; returns a process exit code (2 = bad input, nothing written)."""
    args = parse_args(argv)
    from .dist import configure_cpu_threads, init_distributed, shutdown_distributed

    rank, world = init_distributed()
    configure_cpu_threads(world)
    code = _run(args, rank, world)
    # only after a normal end: after an exception a peer may be gone, and a barrier would wait forever
    shutdown_distributed()
    return code


def _run(args: RunArgs, rank: int, world: int) -> int:
    """Check the input on every rank, then train; 0 on success, 2 on bad input (nothing written)."""
    from .dist import first_failing_rank
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
    trainer = Trainer(prep, rank, world, args.resume, args.overwrite, args.progress)
    trainer.train()
    return 0
