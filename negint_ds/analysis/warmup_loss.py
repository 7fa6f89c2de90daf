"""Average MLM training loss per language after the warm-up stage (Wang et al. 2020, Figure 4c).

The paper plots, per model (JointPair, +adpt, +meta adpt), the average training loss of each language over
the early steps that follow the learning-rate warm-up, to show that ordinary adapters converge more slowly
and meta adapters faster (§4). Here the numbers come from each run's ``metrics.jsonl``: a train record
``{"kind": "train", "step": s, "loss_<lang>": …}`` holds the mean MLM loss (nats per masked token) of the
language over the steps of its logging window that trained that language (the key is absent when none
did). The figure's value for (run, lang) is the plain mean of ``loss_<lang>`` over the train records with
``from_step < step ≤ to_step``; with ``train.log_every = 1`` (one step per record) that is exactly the mean
loss over the language's steps in the window, otherwise a mean of window means.
"""
from __future__ import annotations

import io
import math
import os
from typing import Sequence

from ..atomic import atomic_write_bytes, atomic_write_text
from ..config import ExperimentConfig
from ..train.metrics import read_jsonl
from .pretrained import AnalysisError, run_config
from .tables import csv_text

#: Columns of the rows and of the CSV written beside the plot.
COLUMNS = ("run", "lang", "mean_loss", "records", "nonfinite", "from_step", "to_step", "run_dir")


class WarmupLossError(AnalysisError):
    """The warm-up loss of a run cannot be computed: no metrics file, no train records in the window, bad window."""


def _load_config(run_dir: str) -> ExperimentConfig:
    return run_config(run_dir, WarmupLossError)


def warmup_losses(run_dirs: Sequence[str], from_step: int | None = None, to_step: int | None = None) -> list[dict]:
    """Mean training MLM loss per (run, language) over the train records with ``from_step < step ≤ to_step``.

    Args:
        run_dirs: run directories, each with ``config.yaml`` and ``metrics.jsonl``.
        from_step: exclusive lower bound; None: each run's own ``train.warmup_steps`` (the end of warm-up).
        to_step: inclusive upper bound; None: each run's last train record.

    Returns:
        One row per (run, language of the run), in run order then the run's language order, with keys
        :data:`COLUMNS`: ``run`` (config ``name``, or the directory name when it has none), ``lang``,
        ``mean_loss`` (nats; NaN when the language has no record in the window, or when one of its records is
        non-finite — written as null in the JSONL), ``records`` (records averaged), ``nonfinite``,
        ``from_step``, ``to_step`` (the window actually used), ``run_dir`` (absolute).

    Raises:
        WarmupLossError: a run without config.yaml or metrics.jsonl, ``from_step ≥ to_step``, or a run with no
            train record in its window (the message names the run, the window and the steps it has).
        ValueError: a damaged metrics line (:func:`~negint_ds.train.metrics.read_jsonl`).
    """
    rows = []
    for rd in run_dirs:
        rd = os.path.abspath(rd)
        cfg = _load_config(rd)
        metrics = os.path.join(rd, "metrics.jsonl")
        if not os.path.isfile(metrics):
            raise WarmupLossError(f"{metrics} not found: {rd} has no training metrics (did the run start?)")
        # a step can appear twice only if a resume re-wrote it; the later record is the one that counts
        by_step = {r["step"]: r for r in read_jsonl(metrics) if r["kind"] == "train"}
        if not by_step:
            raise WarmupLossError(f"{metrics} has no train records")
        lo = cfg.train.warmup_steps if from_step is None else int(from_step)
        hi = max(by_step) if to_step is None else int(to_step)
        if lo >= hi:
            raise WarmupLossError(f"{rd}: empty window from_step={lo} ≥ to_step={hi} (from_step defaults to "
                                  f"train.warmup_steps={cfg.train.warmup_steps}, to_step to the last logged step "
                                  f"{max(by_step)})")
        window = [by_step[s] for s in sorted(by_step) if lo < s <= hi]
        if not window:
            raise WarmupLossError(f"{rd}: no train records with {lo} < step ≤ {hi} (its train records cover steps "
                                  f"{min(by_step)}–{max(by_step)}); choose a window inside them")
        name = cfg.name or os.path.basename(rd)
        for lang in cfg.lang_ids:
            key = f"loss_{lang}"
            vals = [r[key] for r in window if key in r]
            finite = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
            nonfinite = len(vals) - len(finite)
            mean = math.fsum(finite) / len(finite) if finite and not nonfinite else float("nan")
            rows.append({"run": name, "lang": lang, "mean_loss": mean, "records": len(vals), "nonfinite": nonfinite,
                         "from_step": lo, "to_step": hi, "run_dir": rd})
    return rows


def _labels(rows: list[dict]) -> dict[str, str]:
    """Legend label per run directory: the run name, with the directory name added where two runs share it."""
    names: dict[str, set[str]] = {}
    for r in rows:
        names.setdefault(r["run"], set()).add(r["run_dir"])
    return {r["run_dir"]: r["run"] if len(names[r["run"]]) == 1 else f"{r['run']} ({os.path.basename(r['run_dir'])})"
            for r in rows}


def rows_csv(rows: list[dict]) -> str:
    """The rows as CSV text (header :data:`COLUMNS`; floats in full precision, NaN as an empty cell)."""
    return csv_text([{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()}
                     for r in rows], COLUMNS)


def plot_warmup_losses(rows: list[dict], png: str, title: str = "Average MLM training loss after warm-up") -> str:
    """Grouped bar chart of :func:`warmup_losses` rows: languages on x, one bar per run; plus a CSV beside it.

    The CSV (``png`` with ``.csv`` instead of ``.png``) holds every plotted number (the rows, :data:`COLUMNS`).
    A NaN ``mean_loss`` is left out of the plot (no bar) and written as an empty cell.

    Returns:
        The CSV path.

    Raises:
        WarmupLossError: no rows.
        ImportError: matplotlib is not installed.
    """
    if not rows:
        raise WarmupLossError("no rows to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = _labels(rows)
    runs = list(dict.fromkeys(r["run_dir"] for r in rows))
    langs = list(dict.fromkeys(r["lang"] for r in rows))
    value = {(r["run_dir"], r["lang"]): r["mean_loss"] for r in rows}
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(langs) * max(1, len(runs)) ** 0.5 + 2), 4), dpi=120)
    for k, rd in enumerate(runs):
        xs = [i + (k - (len(runs) - 1) / 2) * width for i, l in enumerate(langs)
              if math.isfinite(value.get((rd, l), float("nan")))]
        ys = [value[(rd, l)] for l in langs if math.isfinite(value.get((rd, l), float("nan")))]
        ax.bar(xs, ys, width=width, label=labels[rd])
    ax.set_xticks(range(len(langs)))
    ax.set_xticklabels(langs)
    ax.set_xlabel("language")
    ax.set_ylabel("mean MLM training loss (nats)")
    windows = sorted({(r["from_step"], r["to_step"]) for r in rows})
    sub = f"steps {windows[0][0]}–{windows[0][1]}" if len(windows) == 1 else "per-run windows, see CSV"
    ax.set_title(f"{title}\n({sub})", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(png, buf.getvalue())
    csv_path = os.path.splitext(png)[0] + ".csv"
    atomic_write_text(csv_path, rows_csv(rows))
    return csv_path


__all__ = ["COLUMNS", "WarmupLossError", "plot_warmup_losses", "rows_csv", "warmup_losses"]
