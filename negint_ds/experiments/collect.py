"""Read every run's outputs into measurements, and aggregate them over pretraining seeds.

A measurement is one number of one run: validation perplexity or bits per character of a language, a downstream
score (task, setting, metric, test language: the fine-tuning grid's mean over its fine-tuning seeds, with their
sample std and count, and its majority-class ``floor`` where the grid recorded one), a verse-retrieval accuracy, or
a gradient-conflict cosine. Aggregation groups by (row, group, measure, language) and takes mean ± sample std over
the pretraining seeds; with one pretraining seed the spread shown is the fine-tuning seeds' (labelled), and with
neither there is no spread (a finding then stays inconclusive).
"""
from __future__ import annotations

import csv
import glob
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from .plan import Plan, Run

#: Measures where lower is better; every other measure is higher-is-better.
LOWER_IS_BETTER = ("valid_ppl", "bpc")


@dataclass
class Measurement:
    run: str
    row: str
    group: str
    seed: int
    measure: str
    lang: str
    value: float
    ft_std: float | None = None
    ft_n: int = 1
    #: the score of always predicting the training split's most frequent label (:mod:`negint_ds.tasks.baseline`)
    floor: float | None = None


@dataclass
class Aggregate:
    """Mean ± spread of one (row, group, measure, lang) over pretraining seeds.

    ``spread`` is ``pretraining seeds`` (sample std over ≥ 2 seeds), ``fine-tuning seeds`` (one pretraining seed:
    the grid's std over its fine-tuning seeds) or ``none``; ``n`` counts the seeds the std is over. ``floor``: the
    mean majority-class score of the seeds that recorded one (None for other measures and older grids).
    """

    row: str
    group: str
    measure: str
    lang: str
    mean: float
    std: float | None
    n: int
    spread: str
    seeds: list[int] = field(default_factory=list)
    floor: float | None = None

    def cell(self, scale: float = 1.0, digits: int = 1) -> str:
        if not math.isfinite(self.mean):
            return "non-finite"
        s = f"{scale * self.mean:.{digits}f}"
        if self.std is not None:
            s += f" ± {scale * self.std:.{digits}f}"
        return s + f" ({self.n}{'' if self.spread != 'fine-tuning seeds' else ' ft'})"


def _json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_measurements(run: Run) -> list[Measurement]:
    """Every number one grid run has produced so far (missing outputs give none)."""
    out: list[Measurement] = []
    m = lambda measure, lang, v, s=None, n=1, floor=None: out.append(  # noqa: E731
        Measurement(run.id, run.row, run.group, run.seed, measure, lang, float(v), s, n, floor))
    d = run.run_dir
    fp = os.path.join(d, "final_ppl.json")
    if os.path.isfile(fp):
        for lang, r in _json(fp)["valid"].items():
            m("valid_ppl", lang, r["ppl"] if r.get("ppl") is not None else float("nan"))
    for path in sorted(glob.glob(os.path.join(d, "downstream", "*", "*", "results.json"))):
        s = _json(path)
        for r in s["rows"]:
            metrics = [k[:-5] for k in r if k.endswith("_mean") and k != "dev_mean"]
            for metric in metrics:
                m(f"{r['task']}/{r['setting']}/{metric}", r["test_lang"], r[f"{metric}_mean"], r[f"{metric}_std"]
                  if r["n_seeds"] > 1 else None, r["n_seeds"], r.get(f"majority_{metric}"))
    for path in sorted(glob.glob(os.path.join(d, "downstream", "*", "*retrieval*.json"))):
        for r in _json(path):
            m(f"{r['task']}/lg->en", r["lang"], r["lang_to_pivot"])
            m(f"{r['task']}/en->lg", r["lang"], r["pivot_to_lang"])
    bp = os.path.join(d, "analysis", "bpc", "bpc.json")
    if os.path.isfile(bp):
        for r in _json(bp):
            m("bpc", r["lang"], r["bpc"])
    return out


def grad_conflict_rows(run: Run) -> list[dict]:
    """Whole-θ rows (``group == all``) of the run's online gradient-conflict probe: ``{step, pair, kind, cosine}``."""
    path = os.path.join(run.run_dir, "analysis", "grad_conflict.csv")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["group"] == "all"]
    return [{"step": int(r["step"]), "pair": r["pair"], "kind": r["kind"], "cosine": float(r["cosine"])}
            for r in rows if r["cosine"] not in ("", "nan")]


def aggregate(ms: list[Measurement]) -> dict[tuple[str, str, str, str], Aggregate]:
    """(row, group, measure, lang) → :class:`Aggregate` over pretraining seeds (see the module docstring)."""
    by: dict[tuple, list[Measurement]] = {}
    for x in ms:
        by.setdefault((x.row, x.group, x.measure, x.lang), []).append(x)
    out = {}
    for key, xs in by.items():
        vals = np.array([x.value for x in xs], dtype=float)
        if len(xs) >= 2:
            std, n, spread = float(vals.std(ddof=1)), len(xs), "pretraining seeds"
        elif xs[0].ft_std is not None:
            std, n, spread = xs[0].ft_std, xs[0].ft_n, "fine-tuning seeds"
        else:
            std, n, spread = None, 1, "none"
        floors = [x.floor for x in xs if x.floor is not None]
        out[key] = Aggregate(*key, float(vals.mean()), std, n, spread, sorted(x.seed for x in xs),
                             float(np.mean(floors)) if floors else None)
    return out


def cost_measurements(plan: Plan, status: dict) -> list[dict]:
    """Per cost run: median seconds per step (training windows after the first; evaluation and saving excluded)
    and the run's peak resident memory (``status.json``)."""
    rows = []
    for run in plan.runs:
        if run.kind != "cost":
            continue
        path = os.path.join(run.run_dir, "metrics.jsonl")
        rec = status.get(run.id, {}).get("pretrain", {})
        row = {"run": run.id, "row": run.row, "variant": run.variant or "full sum", "n_langs": len(run.langs),
               "state": rec.get("state", "todo"), "log": rec.get("log"), "step_s": None,
               "peak_rss_mib": rec.get("peak_rss_mib")}
        if os.path.isfile(path):
            tr = [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]
            tr = [r for r in tr if r.get("kind") == "train" and r.get("tokens_per_s")]
            tokens_per_step = _tokens_per_step(run, plan.ds_config)
            steps = [tokens_per_step / r["tokens_per_s"] for r in tr[1:]] or \
                    [tokens_per_step / r["tokens_per_s"] for r in tr]
            if steps:
                row["step_s"] = float(np.median(steps))
        rows.append(row)
    return rows


def _tokens_per_step(run: Run, ds: dict) -> int:
    micro = ds.get("train_micro_batch_size_per_gpu", 1) * ds.get("gradient_accumulation_steps", 1)
    rj = os.path.join(run.run_dir, "run.json")
    world = _json(rj).get("world_size", 1) if os.path.isfile(rj) else 1
    return micro * world * run.recipe["train"]["seq_len"]


__all__ = ["Aggregate", "LOWER_IS_BETTER", "Measurement", "aggregate", "cost_measurements",
           "grad_conflict_rows", "run_measurements"]
