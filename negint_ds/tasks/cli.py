"""Command line of ``launchers/finetune.py``: fine-tune and evaluate a pretrained run on downstream tasks.

One task (``--task ner``, ``--set setting=zero_shot`` …) runs its grid; ``--task builtin`` runs every built-in task
the model's languages have data for — within-language (each non-English language), zero-shot from English, and
Bible verse retrieval — and writes ``tables.md`` with the within-language and zero-shot tables (paper Tables 2, 3).

The run directory (default ``<pretrained>/downstream/<task>``) holds ``finetune.json`` (what was asked), one
directory per task and setting with a ``cells/`` directory per grid cell, and the tables. Everything is checked
before anything is written; an existing run directory needs ``--resume`` (finished cells are skipped, an
interrupted cell continues from its last epoch) and the same settings.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from ..analysis.pretrained import AnalysisError, load_pretrained
from ..atomic import atomic_write_json, atomic_write_text
from ..config import ConfigError, from_mapping, read_mapping
from ..config.deepspeed import read_ds_config
from ..config.loader import apply_overrides, to_mapping
from ..data.vocab import VocabularyError
from .config import FinetuneConfig
from .examples import TaskError
from .registry import BUILTIN, task_spec

log = logging.getLogger("negint_ds")
USER_ERRORS = (TaskError, AnalysisError, ConfigError, VocabularyError, FileNotFoundError)
ASKED = "finetune.json"


def _parser() -> argparse.ArgumentParser:
    import deepspeed

    p = argparse.ArgumentParser(prog="launchers/finetune.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)
    p.add_argument("--pretrained", required=True, help="a finished pretraining run directory")
    p.add_argument("--task", required=True, help="a task name (ner, udpos, xnli, tydiqa, tatoeba, bible_genre, "
                                                 "bible_retrieval, pattern_pos, pattern_sentiment) or 'builtin'")
    p.add_argument("--config", default=None, help="a FinetuneConfig YAML/JSON (optional)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a FinetuneConfig field, e.g. --set setting=zero_shot --set seeds=[1,2,3] (repeatable)")
    p.add_argument("--run_dir", default=None, help="default: <pretrained>/downstream/<task>")
    p.add_argument("--resume", action="store_true", help="continue an existing run directory")
    p.add_argument("--checkpoint", default=None, help="pretrained weights from this checkpoint tag instead of the "
                                                      "export")
    p.add_argument("--no_progress", action="store_true")
    deepspeed.add_config_arguments(p)
    return p


def _config(task: str, path: str | None, overrides: list[str], extra: dict | None = None) -> FinetuneConfig:
    data = read_mapping(path) if path else {}
    data = {**data, **(extra or {}), "task": task}
    data = apply_overrides(data, overrides)
    return from_mapping(FinetuneConfig, data, source=path or "--set", root="finetune")


def builtin_configs(pre, path: str | None, overrides: list[str]) -> list[FinetuneConfig]:
    """The grids of ``--task builtin``: for each built-in task with data for the model's languages, within-language
    in each non-English language and zero-shot from English (when the model has English and another language)."""
    from .grid import languages
    from .registry import data_languages

    out = []
    for name in BUILTIN:
        spec = task_spec(name)
        probe = _config(name, path, overrides)
        have = data_languages(spec, probe, list(pre.lang_ids), pre.cfg.data)
        targets = [l for l in have if l != "en"]  # the tables are about lg; en within-language is a --task run
        if "within" in spec.settings and targets and spec.kind != "retrieval":
            out.append(_config(name, path, overrides, {"setting": "within", "langs": targets}))
        if "zero_shot" in spec.settings and "en" in have and len(have) > 1:
            cfg = _config(name, path, overrides, {"setting": "zero_shot", "source": "en"})
            languages(pre, spec, cfg)
            out.append(cfg)
    if not out:
        raise TaskError(f"no built-in task has data for the languages of {pre.run_dir} ({pre.lang_ids})")
    return out


def _check_run_dir(run_dir: str, asked: dict, resume: bool) -> None:
    path = os.path.join(run_dir, ASKED)
    if os.path.isfile(path):
        if not resume:
            raise TaskError(f"{run_dir} already holds a fine-tuning run; pass --resume to continue it (finished cells "
                            f"are kept) or choose another --run_dir")
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if saved != asked:
            diff = sorted(k for k in set(saved) | set(asked) if saved.get(k) != asked.get(k))
            raise TaskError(f"{run_dir} was run with other settings ({', '.join(diff)} differ); --resume needs the "
                            f"same --task, --config, --set, --pretrained and DeepSpeed config")
    elif resume:
        raise TaskError(f"--resume: {run_dir} holds no fine-tuning run ({ASKED} missing)")
    elif os.path.isdir(run_dir) and os.listdir(run_dir):
        raise TaskError(f"{run_dir} exists and is not empty; choose another --run_dir")


def run(a, rank: int, world: int) -> int:
    """Plan everything (no writes), then run the grids and write the tables on rank 0."""
    from ..train.dist import barrier, on_rank0
    from .grid import plan, run_plan
    from .retrieval import evaluate_pairs
    from .tables import builtin_tables
    from .registry import data_languages, load_language

    pre = load_pretrained(a.pretrained, a.checkpoint)
    ds = read_ds_config(a.deepspeed_config) if a.deepspeed_config else None
    if a.task == "builtin":
        cfgs = builtin_configs(pre, a.config, a.overrides)
    else:
        cfgs = [_config(a.task, a.config, a.overrides)]
    retrieval, plans = [], []
    for cfg in cfgs:
        spec = task_spec(cfg.task)
        if spec.kind == "retrieval":
            langs = cfg.langs if cfg.langs is not None else [
                l for l in data_languages(spec, cfg, list(pre.lang_ids), pre.cfg.data) if l != "en"]
            for l in langs:
                if l not in pre.lang_ids:
                    raise TaskError(f"language {l!r} is not a language of the pretrained model {pre.run_dir} "
                                    f"(it has {list(pre.lang_ids)})")
            retrieval.append((cfg, {l: load_language(spec, cfg, l, pre.cfg.data)["test"] for l in langs}))
        else:
            plans.append(plan(pre, cfg))
    if plans and ds is None:
        raise TaskError("--deepspeed_config is required for tasks that fine-tune")
    run_dir = os.path.abspath(a.run_dir or os.path.join(a.pretrained, "downstream", a.task))
    asked = {"task": a.task, "pretrained": pre.run_dir, "pretrained_step": pre.step,
             "configs": [to_mapping(c) for c in cfgs], "ds_config": ds}
    _check_run_dir(run_dir, asked, a.resume)   # every check above ran before this first write
    barrier()  # every rank has looked at the directory before rank 0 writes into it
    on_rank0(lambda: (os.makedirs(run_dir, exist_ok=True),
                      atomic_write_json(os.path.join(run_dir, ASKED), asked)), rank, world)
    if rank == 0:  # the console's records also go to the run directory (appended on --resume)
        fh = logging.FileHandler(os.path.join(run_dir, "finetune.log"), encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(fh)
    summaries = []
    for p in plans:
        out = os.path.join(run_dir, f"{p.spec.name}-{p.cfg.setting}")
        summaries.append(run_plan(pre, p, ds, out, rank, world, progress=not a.no_progress))
    for cfg, pairs_of in retrieval:
        rows = [{"task": cfg.task, "lang": l, **evaluate_pairs(pre, pairs, cfg.layer, cfg.max_len)}
                for l, pairs in pairs_of.items()]
        summaries.append({"task": cfg.task, "metric": "accuracy", "retrieval": rows})
        on_rank0(lambda rows=rows, cfg=cfg: atomic_write_json(os.path.join(run_dir, f"{cfg.task}.json"), rows),
                 rank, world)
    text = builtin_tables(pre, summaries)
    on_rank0(lambda: atomic_write_text(os.path.join(run_dir, "tables.md"), text), rank, world)
    if rank == 0:
        print(text)
        print(f"results in {run_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad input (a named error; nothing written when it is found before the first cell)."""
    a = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from ..train.dist import configure_cpu_threads, fail_fast, init_distributed, shutdown_distributed

    rank, world = init_distributed()
    configure_cpu_threads(world)
    if rank != 0:
        logging.getLogger("negint_ds").setLevel(logging.WARNING)
    try:
        with fail_fast(world, USER_ERRORS):
            code = run(a, rank, world)
    except USER_ERRORS as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    shutdown_distributed()
    return code


__all__ = ["builtin_configs", "main", "run"]
