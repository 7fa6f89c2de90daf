"""A task's whole grid (Appendix A): plan (every check before anything is written), run the cells, select, tabulate.

Selection, as Appendix A: each (hyper-parameters, seed) cell keeps its best dev epoch; for each training language
the hyper-parameters with the best dev score averaged over seeds are chosen; their test scores are reported as
mean ± sample standard deviation over the seeds (n shown). ``within``: dev and test in the language;
``zero_shot``: dev in the source language, test in every other language.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from ..analysis.tables import csv_text
from ..atomic import atomic_write_json, atomic_write_text
from ..config.loader import to_mapping
from ..train.dist import on_rank0
from . import evaluate as ev
from .baseline import majority_scores
from .cell import Cell, make_eval, run_cell
from .config import FinetuneConfig
from .encode import encode_qa, encode_texts, encode_tokens
from .examples import TaskError
from .registry import TaskSpec, cap, data_languages, label_set, load_language, task_spec

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """Everything a grid needs, checked: languages, encoded rows, label set and the cells."""

    spec: TaskSpec
    cfg: FinetuneConfig
    labels: tuple[str, ...]
    train: dict[str, tuple[list, list]]  # train lang → (examples, rows)
    dev: dict[str, tuple[list, list]]
    test: dict[str, tuple[list, list]]
    cells: list[Cell]
    test_langs: dict[str, tuple[str, ...]]  # train lang → its test languages


def _encode(spec: TaskSpec, cfg: FinetuneConfig, examples: list, vocab, label_ids: dict, max_len: int) -> list:
    if spec.kind == "token":
        return encode_tokens(examples, vocab, label_ids, max_len)
    if spec.kind == "sequence":
        return encode_texts(examples, vocab, label_ids, max_len)
    return encode_qa(examples, vocab, max_len, cfg.doc_stride)


def _need(splits: dict, split: str, lang: str, spec: TaskSpec) -> list:
    if not splits.get(split):
        raise TaskError(f"task {spec.name}: the data of {lang} has no {split!r} split (has "
                        f"{sorted(k for k, v in splits.items() if v)}); the {spec.name} setting needs it")
    return splits[split]


def languages(pre, spec: TaskSpec, cfg: FinetuneConfig) -> tuple[list[str], list[str]]:
    """(training languages, test languages) of the grid.

    Raises:
        TaskError: the setting is not supported by the task; a language is not one of the model's, or the task
            has no data for it; zero_shot without any test language.
    """
    if cfg.setting not in spec.settings:
        raise TaskError(f"task {spec.name} supports the settings {list(spec.settings)}, not {cfg.setting!r}")
    model_langs = list(pre.lang_ids)
    have = data_languages(spec, cfg, model_langs, pre.cfg.data)
    asked = list(cfg.langs) if cfg.langs is not None else None
    for l in (asked or []) + ([cfg.source] if cfg.setting == "zero_shot" else []):
        if l not in model_langs:
            raise TaskError(f"language {l!r} is not a language of the pretrained model {pre.run_dir} "
                            f"(it has {model_langs})")
        if l not in have:
            raise TaskError(f"task {spec.name} has no data for {l!r}; it has data for {have} of the model's "
                            f"languages")
    if cfg.setting == "within":
        train = asked if asked is not None else have
        if not train:
            raise TaskError(f"task {spec.name} has no data for any language of the model ({model_langs})")
        return train, train
    tests = asked if asked is not None else [l for l in have if l != cfg.source]
    if not tests:
        raise TaskError(f"zero_shot from {cfg.source}: no other language of the model has {spec.name} data "
                        f"(model {model_langs}, data {have})")
    return [cfg.source], tests


def plan(pre, cfg: FinetuneConfig, cache_dir: str | None = None) -> Plan:
    """Load, check and encode every split the grid needs; expand the cells. Writes nothing.

    Raises:
        TaskError: see :func:`languages`; a missing split; a label outside the label set; the loaders' errors.
    """
    spec = task_spec(cfg.task)
    if spec.kind == "retrieval":
        raise TaskError(f"task {spec.name} has no training: use negint_ds.tasks.retrieval")
    train_langs, test_langs = languages(pre, spec, cfg)
    data = {l: load_language(spec, cfg, l, pre.cfg.data, cache_dir) for l in dict.fromkeys(train_langs + test_langs)}
    labels = label_set(spec)
    if labels is None:  # local BIO files: the training languages' labels, "O" first
        seen = {lab for l in train_langs for e in _need(data[l], "train", l, spec) for lab in e.labels}
        labels = tuple(sorted(seen, key=lambda x: (x != "O", x[2:], x)))
    label_ids = {lab: i for i, lab in enumerate(labels)}
    max_len = cfg.max_len or pre.cfg.model.max_positions
    if max_len > pre.cfg.model.max_positions:
        raise TaskError(f"max_len={max_len} exceeds the model's max_positions={pre.cfg.model.max_positions}")
    n_train = cfg.max_train_examples if cfg.max_train_examples is not None else spec.max_train_examples
    enc = lambda xs: (xs, _encode(spec, cfg, xs, pre.vocab, label_ids, max_len))  # noqa: E731
    train = {l: enc(cap(_need(data[l], "train", l, spec), n_train, f"train:{l}")) for l in train_langs}
    dev = {l: enc(cap(_need(data[l], "dev", l, spec), cfg.max_eval_examples, f"dev:{l}")) for l in train_langs}
    test = {l: enc(cap(_need(data[l], "test", l, spec), cfg.max_eval_examples, f"test:{l}")) for l in test_langs}
    batch_sizes = cfg.batch_sizes or list(spec.batch_sizes)
    lrs = cfg.lrs or list(spec.lrs)
    clrs = cfg.classifier_lrs or (list(spec.classifier_lrs) if spec.classifier_lrs else [None])
    cells, tests_of = [], {}
    for tl in train_langs:
        tests_of[tl] = (tl,) if cfg.setting == "within" else tuple(test_langs)
        for bs in batch_sizes:
            for lr in lrs:
                for clr in clrs:
                    for seed in cfg.seeds:
                        cells.append(Cell(cfg.setting, tl, tests_of[tl], bs, lr, clr, seed))
    return Plan(spec, cfg, labels, train, dev, test, cells, tests_of)


def _scorer(spec: TaskSpec, cfg: FinetuneConfig):
    if spec.kind == "token":
        return lambda ex, rows, z, labels: ev.score_tokens(ex, rows, z, list(labels), spec.metric)
    if spec.kind == "sequence":
        return lambda ex, rows, z, labels: ev.score_sequences(ex, z, list(labels))
    return lambda ex, rows, z, labels: ev.score_qa(ex, rows, z, cfg.max_answer_tokens)


def run_plan(pre, p: Plan, ds_config: dict, out_dir: str, rank: int = 0, world: int = 1,
             progress: bool = False) -> dict:
    """Run every cell of ``p`` under ``out_dir/cells/`` (finished ones are read back), then select and tabulate.

    Returns:
        The summary (also ``out_dir/results.json``, ``results.csv``, ``results.md``).
    """
    lang_index = {l: i for i, l in enumerate(pre.lang_ids)}
    score = _scorer(p.spec, p.cfg)
    results = []
    base = {"task": p.spec.name, "config": to_mapping(p.cfg), "pretrained": pre.run_dir, "pretrained_step": pre.step,
            "vocab_sha256": pre.vocab.sha256, "labels": list(p.labels)}
    for k, cell in enumerate(p.cells):
        cell_dir = os.path.join(out_dir, "cells", cell.name)
        if rank == 0:
            os.makedirs(cell_dir, exist_ok=True)
        dev_ex, dev_rows = p.dev[cell.train_lang]
        dev_eval = make_eval(p.spec, p.cfg, dev_ex, dev_rows, p.labels, rank, world, lang_index, score)
        tests = {l: make_eval(p.spec, p.cfg, *p.test[l], p.labels, rank, world, lang_index, score)
                 for l in cell.test_langs}
        log.info("cell %d/%d: %s", k + 1, len(p.cells), cell.name)
        results.append(run_cell(pre, p.spec, p.cfg, cell, len(p.labels), p.train[cell.train_lang][1], dev_eval,
                                tests, ds_config, cell_dir, {**base, "cell": cell.name}, rank, world, progress))
    summary = summarize(p.spec, results, floors(p))
    on_rank0(lambda: write_summary(out_dir, p.spec, summary), rank, world)
    return summary


def floors(p: Plan) -> dict[tuple[str, str], dict[str, float]]:
    """(train lang, test lang) → the majority-class scores of that pair (:mod:`.baseline`); empty for QA."""
    out = {}
    for tl, tests in p.test_langs.items():
        for l in tests:
            s = majority_scores(p.spec, p.train[tl][0], p.test[l][0], p.labels)
            if s is not None:
                out[(tl, l)] = s
    return out


def summarize(spec: TaskSpec, results: list[dict], floor_scores: dict | None = None) -> dict:
    """Appendix A selection over finished cells: per training language, the hyper-parameters with the best mean
    dev score over seeds, and their test scores as mean ± sample std over seeds.

    Args:
        floor_scores: :func:`floors`' majority-class scores, stored in each row as ``majority_<metric>``.

    Returns:
        ``{"task", "metric", "rows": [{setting, train_lang, test_lang, batch_size, lr, classifier_lr, n_seeds,
        dev_mean, <metric>_mean, <metric>_std, ..., majority_<metric>, ...}], "cells": [per-cell summaries]}``.
    """
    groups: dict[tuple, dict[tuple, list[dict]]] = {}
    for r in results:
        c = r["cell"]
        key = (c["setting"], c["train_lang"])
        hp = (c["batch_size"], c["lr"], c["classifier_lr"])
        groups.setdefault(key, {}).setdefault(hp, []).append(r)
    rows = []
    for (setting, tl), by_hp in groups.items():
        hp, runs = max(by_hp.items(), key=lambda kv: np.mean([r["best_dev"] for r in kv[1]]))
        for lang in runs[0]["test"]:
            row = {"task": spec.name, "setting": setting, "train_lang": tl, "test_lang": lang, "batch_size": hp[0],
                   "lr": hp[1], "classifier_lr": hp[2], "n_seeds": len(runs),
                   "seeds": [r["cell"]["seed"] for r in runs],
                   "dev_mean": float(np.mean([r["best_dev"] for r in runs]))}
            for m in runs[0]["test"][lang]:
                vals = np.array([r["test"][lang][m] for r in runs], dtype=float)
                row[f"{m}_mean"] = float(vals.mean())
                row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            row.update({f"majority_{m}": v for m, v in (floor_scores or {}).get((tl, lang), {}).items()})
            rows.append(row)
    cells = [{"name": r["name"], "best_epoch": r["best_epoch"], "best_dev": r["best_dev"],
              **{f"test_{l}_{spec.metric}": s[spec.metric] for l, s in r["test"].items()},
              "wall_seconds": round(r["wall_seconds"], 1)} for r in results]
    return {"task": spec.name, "metric": spec.metric, "rows": rows, "cells": cells}


def write_summary(out_dir: str, spec: TaskSpec, summary: dict) -> None:
    """``results.json``, ``results.csv`` (one row per setting × training × test language) and ``results.md``."""
    atomic_write_json(os.path.join(out_dir, "results.json"), summary)
    rows = summary["rows"]
    if rows:
        keys = list(dict.fromkeys(k for r in rows for k in r if k != "seeds"))
        atomic_write_text(os.path.join(out_dir, "results.csv"), csv_text(rows, keys))
    atomic_write_text(os.path.join(out_dir, "results.md"), markdown(spec, summary))


def pm(row: dict, metric: str) -> str:
    """``mean ± std`` in percent with the seed count, e.g. ``61.2 ± 1.3 (3)``."""
    return f"{100 * row[f'{metric}_mean']:.1f} ± {100 * row[f'{metric}_std']:.1f} ({row['n_seeds']})"


def markdown(spec: TaskSpec, summary: dict) -> str:
    """The selected rows as a markdown table (scores in percent, mean ± std over seeds, seeds in brackets)."""
    rows = summary["rows"]
    if not rows:
        return f"# {spec.name}\n\nno finished cells\n"
    metrics = [k[:-5] for k in rows[0] if k.endswith("_mean") and k != "dev_mean"]
    floor = f"majority_{spec.metric}"
    has_floor = any(floor in r for r in rows)
    head = ["setting", "train", "test", "batch", "lr", "dev " + spec.metric] + metrics
    head += [f"majority class {spec.metric}"] if has_floor else []
    lines = [f"# {spec.name}: {spec.description}", "",
             "Scores in percent: mean ± sample std over seeds (number of seeds); hyper-parameters chosen by the mean "
             "dev score (Appendix A)." + (" Majority class: the test score of always predicting the training "
                                          "split's most frequent label (a score there learned only the prior)."
                                          if has_floor else ""),
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lr = f"{r['lr']:g}" + (f" / {r['classifier_lr']:g}" if r["classifier_lr"] is not None else "")
        cells = [r["setting"], r["train_lang"], r["test_lang"], str(r["batch_size"]), lr,
                 f"{100 * r['dev_mean']:.1f}"] + [pm(r, m) for m in metrics]
        cells += [f"{100 * r[floor]:.1f}" if floor in r else "–"] if has_floor else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["Plan", "floors", "languages", "markdown", "plan", "run_plan", "summarize", "write_summary"]
