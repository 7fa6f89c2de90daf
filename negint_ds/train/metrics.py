"""Metrics to JSONL, CSV and TensorBoard (through DeepSpeed's monitor), on rank 0 only."""
from __future__ import annotations

import csv
import json
import os

from ..atomic import atomic_write_text


class MetricsLogger:
    """Append-only records of training and validation, truncatable on resume.

    Train records: ``{"kind": "train", "step", "loss", "loss_<lang>"..., "lr", "grad_norm", "tokens_per_s",
    "elapsed_s"}`` averaged over the logging window; valid records: ``{"kind": "valid", "step",
    "ppl_<lang>"..., "loss_<lang>"...}`` with perplexity = exp(mean MLM cross-entropy on masked tokens).

    Args:
        paths: a :class:`~negint_ds.train.run_dir.RunDir`.
        lang_ids: language ids (fixes the CSV columns).
        monitor: DeepSpeed ``engine.monitor`` (TensorBoard), or None.
        enabled: False on ranks other than 0.
        extra_train_cols: more train.csv columns (e.g. the meta step's statistics), after the standard ones.
    """

    def __init__(self, paths, lang_ids: list[str], monitor=None, enabled: bool = True,
                 extra_train_cols: tuple[str, ...] | list[str] = ()):
        self.paths, self.langs, self.monitor, self.enabled = paths, list(lang_ids), monitor, enabled
        self.train_cols = ["step", "loss"] + [f"loss_{l}" for l in self.langs] + [
            "lr", "grad_norm", "tokens_per_s", "elapsed_s"] + list(extra_train_cols)
        self.valid_cols = ["step"] + [f"ppl_{l}" for l in self.langs] + [f"loss_{l}" for l in self.langs]

    def truncate_after(self, step: int) -> None:
        """Drop records after ``step`` (a resume from that step will write them again)."""
        if not self.enabled or not os.path.isfile(self.paths.metrics):
            return
        with open(self.paths.metrics, encoding="utf-8") as f:
            keep = [r for r in (json.loads(l) for l in f if l.strip()) if r["step"] <= step]
        atomic_write_text(self.paths.metrics, "".join(json.dumps(r) + "\n" for r in keep))
        for path, kind, cols in ((self.paths.train_csv, "train", self.train_cols),
                                 (self.paths.valid_csv, "valid", self.valid_cols)):
            rows = [r for r in keep if r["kind"] == kind]
            text = ",".join(cols) + "\n" + "".join(",".join(_fmt(r.get(c)) for c in cols) + "\n" for r in rows)
            atomic_write_text(path, text)

    def records(self, kind: str | None = None) -> list[dict]:
        """All records so far (optionally of one kind)."""
        if not os.path.isfile(self.paths.metrics):
            return []
        with open(self.paths.metrics, encoding="utf-8") as f:
            recs = [json.loads(l) for l in f if l.strip()]
        return [r for r in recs if kind is None or r["kind"] == kind]

    def write(self, record: dict) -> None:
        """Append one record to the JSONL, the matching CSV and TensorBoard."""
        if not self.enabled:
            return
        with open(self.paths.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        path, cols = ((self.paths.train_csv, self.train_cols) if record["kind"] == "train"
                      else (self.paths.valid_csv, self.valid_cols))
        new = not os.path.isfile(path) or os.path.getsize(path) == 0
        with open(path, "a", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(cols)
            w.writerow([_fmt(record.get(c)) for c in cols])
        if self.monitor is not None and getattr(self.monitor, "enabled", False):
            events = [(f"{record['kind']}/{k}", float(v), record["step"]) for k, v in record.items()
                      if k not in ("kind", "step") and isinstance(v, (int, float)) and v is not None]
            self.monitor.write_events(events)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
