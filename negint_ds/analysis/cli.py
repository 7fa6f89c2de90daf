"""Command line of ``launchers/analyze.py``: one sub-command per analysis (see the launcher's docstring)."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ..config import ConfigError, GradConflictConfig
from ..data.binarized import BinarizedError
from ..data.vocab import VocabularyError
from .pretrained import AnalysisError

log = logging.getLogger("negint_ds")
#: Bad input: a named error and exit code 2, no traceback.
USER_ERRORS = (AnalysisError, ConfigError, BinarizedError, VocabularyError, FileNotFoundError)


def _parser() -> argparse.ArgumentParser:
    import deepspeed

    p = argparse.ArgumentParser(prog="launchers/analyze.py", description=__doc__)
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("grad_conflict", help="Fig. 3 offline: θ-gradient cosines between languages at every saved "
                                             "checkpoint (the online probe: the recipe's analysis.grad_conflict)")
    g.add_argument("--run_dir", required=True)
    g.add_argument("--checkpoints", nargs="+", metavar="TAG", default=None, help="default: every checkpoint")
    g.add_argument("--sequences", type=int, default=None,
                   help="sequences per gradient (default: the recipe's analysis.grad_conflict.sequences)")
    g.add_argument("--micro_batch", type=int, default=None, help="default: the run's training micro-batch")
    g.add_argument("--controls", nargs="+", default=None, metavar="LANG",
                   help="same-language controls (default: the recipe's, else every language)")
    g.add_argument("--dropout", action="store_true", help="probe with dropout on (default off)")
    g.add_argument("--no_progress", action="store_true")

    gp = sub.add_parser("grad_conflict_plot", help="Fig. 3 across runs: every run's pairs and controls in one figure")
    gp.add_argument("--runs", nargs="+", required=True)
    gp.add_argument("--offline", action="store_true", help="the offline CSVs instead of the online probe's")
    gp.add_argument("--x", choices=["step", "epoch"], default="step")
    gp.add_argument("--out_dir", required=True)

    m = sub.add_parser("masks", help="per-language Hard Concrete (L0) masks on the frozen model (Eq. 1; DeepSpeed)")
    m.add_argument("--run_dir", required=True)
    m.add_argument("--langs", nargs="+", default=None, help="default: every language of the model")
    m.add_argument("--seeds", nargs="+", type=int, default=[0, 1],
                   help="one mask run per seed (two give the within-language control of Fig. 4a)")
    m.add_argument("--out_dir", default=None, help="default: <run_dir>/analysis/masks")
    m.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a MaskConfig field, e.g. --set steps=300 --set lambda_l0=0.05 (repeatable)")
    m.add_argument("--no_progress", action="store_true")
    deepspeed.add_config_arguments(m)

    r = sub.add_parser("mask_report", help="Fig. 4a/4b from saved masks: per-layer π similarity, top groups")
    r.add_argument("--run_dir", required=True)
    r.add_argument("--pairs", nargs="+", required=True, metavar="LG-EN", help="e.g. sw-en (lg first, reference second)")
    r.add_argument("--mask_dir", default=None, help="default: <run_dir>/analysis/masks")
    r.add_argument("--out_dir", default=None, help="default: <run_dir>/analysis")

    w = sub.add_parser("warmup_loss", help="Fig. 4c: mean MLM training loss per language after warm-up, per run")
    w.add_argument("--runs", nargs="+", required=True)
    w.add_argument("--from_step", type=int, default=None, help="default: each run's train.warmup_steps")
    w.add_argument("--to_step", type=int, default=None, help="default: each run's last step")
    w.add_argument("--out_dir", required=True)

    b = sub.add_parser("bpc", help="vocabulary-independent validation metric (PLL bits per character) beside "
                                   "perplexity, comparable across models with different vocabularies")
    b.add_argument("--runs", nargs="+", required=True)
    b.add_argument("--langs", nargs="+", default=None, help="default: every language of each run")
    b.add_argument("--split", default="valid", choices=["valid", "test"])
    b.add_argument("--max_sentences", type=int, default=200,
                   help="the first N sentences of the split (the same text for every run); 0 = all")
    b.add_argument("--out_dir", required=True)
    return p


def _grad_conflict(a, rank: int, world: int) -> int:
    import torch

    from .grad_conflict_offline import offline_grad_conflict
    from .pretrained import run_config

    recipe = run_config(os.path.abspath(a.run_dir))
    base = recipe.analysis.grad_conflict
    cfg = GradConflictConfig(enabled=True, sequences=a.sequences or base.sequences, micro_batch=a.micro_batch,
                             controls=a.controls if a.controls is not None else base.controls, dropout=a.dropout)
    problems = cfg.validate()
    if problems:
        raise AnalysisError("; ".join(problems))
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    rows = offline_grad_conflict(a.run_dir, cfg, a.checkpoints, device, rank, world, progress=not a.no_progress)
    if rank == 0:
        print(f"{len(rows)} rows in {os.path.join(os.path.abspath(a.run_dir), 'analysis', 'grad_conflict_offline.csv')}")
    return 0


def _grad_conflict_plot(a, rank: int, world: int) -> int:
    from .grad_conflict import COLUMNS, combine_runs, plot
    from .tables import write_csv

    rows = combine_runs(a.runs, a.offline)
    os.makedirs(a.out_dir, exist_ok=True)
    png = os.path.join(a.out_dir, "grad_conflict_runs.png")
    plot(rows, png, "θ-gradient similarity during pretraining (cf. Fig. 3)", x=a.x)
    write_csv(rows, ("run", *COLUMNS), os.path.join(a.out_dir, "grad_conflict_runs.csv"))
    print(f"figure {png} (and grad_conflict_runs_groups.png), numbers grad_conflict_runs.csv")
    return 0


def _warmup_loss(a, rank: int, world: int) -> int:
    from .warmup_loss import plot_warmup_losses, warmup_losses

    rows = warmup_losses(a.runs, a.from_step, a.to_step)
    os.makedirs(a.out_dir, exist_ok=True)
    png = os.path.join(a.out_dir, "warmup_loss.png")
    csv_path = plot_warmup_losses(rows, png)
    for r in rows:
        print(f"{r['run']:<32} {r['lang']:<4} {r['mean_loss']:.4f}  ({r['records']} records, steps "
              f"{r['from_step']}–{r['to_step']})")
    print(f"figure {png}, numbers {csv_path}")
    return 0


def _bpc(a, rank: int, world: int) -> int:
    import torch

    from .pll import bpc_table

    device = "cuda" if torch.cuda.is_available() else "cpu"
    bpc_table(a.runs, a.langs, a.split, a.max_sentences or None, a.out_dir, device=device)
    with open(os.path.join(a.out_dir, "bpc.md"), encoding="utf-8") as f:
        print(f.read())
    return 0


def _mask_config(overrides: list[str]):
    import dataclasses

    import yaml

    from .masks import MaskConfig

    fields = {f.name for f in dataclasses.fields(MaskConfig)}
    values, problems = {}, []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            problems.append(f"--set {item!r}: expected KEY=VALUE")
        elif key not in fields:
            problems.append(f"--set {key}: not a mask setting (known: {sorted(fields)})")
        else:
            values[key] = yaml.safe_load(text)
    cfg = MaskConfig(**values) if not problems else None
    problems += cfg.validate() if cfg is not None else []
    if problems:
        raise AnalysisError("mask settings: " + "; ".join(problems))
    return cfg


def _masks(a, rank: int, world: int) -> int:
    from ..config import read_ds_config
    from .masks import train_language_mask
    from .pretrained import load_pretrained

    if not a.deepspeed_config:
        raise AnalysisError("masks: --deepspeed_config is required (e.g. ds_configs/cpu_zero2.json): the masks are "
                            "trained with DeepSpeed")
    cfg = _mask_config(a.overrides)
    ds_config = read_ds_config(a.deepspeed_config)
    pre = load_pretrained(a.run_dir)
    langs = a.langs or pre.lang_ids
    for lang in langs:
        pre.lang_index(lang)
    out_dir = a.out_dir or os.path.join(pre.run_dir, "analysis", "masks")
    for lang in langs:
        for seed in a.seeds:
            s = train_language_mask(pre, lang, seed, cfg, ds_config, out_dir, progress=not a.no_progress)
            if rank == 0:
                print(f"{lang} seed {seed}: sparsity {s['sparsity']:.3f}, valid MLM loss {s['valid_loss_masked']:.4f} "
                      f"with the mask vs {s['valid_loss_unmasked']:.4f} without")
    return 0


def _mask_report(a, rank: int, world: int) -> int:
    from .mask_similarity import write_mask_report

    mask_dir = a.mask_dir or os.path.join(os.path.abspath(a.run_dir), "analysis", "masks")
    if not os.path.isdir(mask_dir):
        raise AnalysisError(f"no masks in {mask_dir}: run `launchers/analyze.py masks` first")
    runs = set(os.listdir(mask_dir))
    pairs, seeds_of = [], {}
    for r in runs:
        lang, _, seed = r.rpartition("_seed")
        if seed.isdigit():
            seeds_of.setdefault(lang, []).append(int(seed))
    for item in a.pairs:
        lg, sep, ref = item.partition("-")
        if not sep or lg not in seeds_of or ref not in seeds_of:
            raise AnalysisError(f"--pairs {item!r}: expected LG-REF with masks of both in {mask_dir} (it has "
                                f"{sorted(seeds_of)})")
        s_lg, s_ref = min(seeds_of[lg]), min(seeds_of[ref])
        pairs.append((f"{lg}_seed{s_lg}", f"{ref}_seed{s_ref}"))
        for lang in (ref, lg):  # the within-language control of Fig. 4a: two independently seeded runs
            seeds = sorted(seeds_of[lang])
            if len(seeds) > 1 and (f"{lang}_seed{seeds[0]}", f"{lang}_seed{seeds[1]}") not in pairs:
                pairs.append((f"{lang}_seed{seeds[0]}", f"{lang}_seed{seeds[1]}"))
    out_dir = a.out_dir or os.path.join(os.path.abspath(a.run_dir), "analysis")
    for path in write_mask_report(mask_dir, pairs, out_dir):
        print(path)
    return 0


COMMANDS = {"grad_conflict": _grad_conflict, "grad_conflict_plot": _grad_conflict_plot, "masks": _masks, "mask_report": _mask_report,
            "warmup_loss": _warmup_loss, "bpc": _bpc}
#: Commands that run in a process group, one process per rank (the others are single-process file work).
DISTRIBUTED = {"grad_conflict", "masks"}


def main(argv: list[str] | None = None) -> int:
    """Parse and run one analysis. Exit codes: 0 done, 2 bad input (a named error, nothing written)."""
    a = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    rank, world = 0, 1
    if a.command in DISTRIBUTED:  # one process or N (deepspeed/mpiexec), as the pretraining launcher does
        from ..train.dist import configure_cpu_threads, init_distributed

        rank, world = init_distributed()
        configure_cpu_threads(world)
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    from ..train.dist import fail_fast

    try:
        with fail_fast(world, USER_ERRORS):
            code = COMMANDS[a.command](a, rank, world)
    except USER_ERRORS as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    if a.command in DISTRIBUTED:  # only after a normal end, as in negint_ds.train.cli
        from ..train.dist import shutdown_distributed

        shutdown_distributed()
    return code
