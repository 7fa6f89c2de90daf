"""Metrics to JSONL, CSV and TensorBoard (through DeepSpeed's monitor), on rank 0 only."""
from __future__ import annotations

import csv
import json
import os

from ..atomic import atomic_write_text, json_safe


class MetricsLogger:
    """Append-only records of training and validation, truncatable on resume.

    Train records: ``{"kind": "train", "step", "loss", "loss_<lang>"..., "lr", "grad_norm", "tokens_per_s",
    "elapsed_s"}`` averaged over the logging window; valid records: ``{"kind": "valid", "step",
    "ppl_<lang>"..., "loss_<lang>"..., "tokens_<lang>"..., "ppl_lo_<lang>"..., "ppl_hi_<lang>"...}`` with
    perplexity = exp(mean MLM cross-entropy on masked tokens), its masked-token count and 95% interval.
    A non-finite value is written as null and named in the record's ``"nonfinite"`` list (strict JSON).

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
        self.valid_cols = ["step"] + [f"{k}_{l}" for k in ("ppl", "loss", "tokens", "ppl_lo", "ppl_hi")
                                      for l in self.langs]

    def truncate_after(self, step: int) -> None:
        """Drop records after ``step`` (a resume from that step will write them again)."""
        if not self.enabled or not os.path.isfile(self.paths.metrics):
            return
        keep = [r for r in read_jsonl(self.paths.metrics) if r["step"] <= step]
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
        recs = read_jsonl(self.paths.metrics)
        return [r for r in recs if kind is None or r["kind"] == kind]

    def write(self, record: dict) -> None:
        """Append one record to the JSONL, the matching CSV and TensorBoard."""
        if not self.enabled:
            return
        record = strict_json_record(record)
        with open(self.paths.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
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


def strict_json_record(record: dict) -> dict:
    """``record`` with every non-finite float replaced by None and their keys listed under ``"nonfinite"``.

    JSON has no NaN or infinity (Python would write the invalid tokens ``NaN``/``Infinity``); a reader
    still learns which values were not finite.
    """
    safe = json_safe(record)
    bad = sorted(k for k, v in safe.items() if v is None and record[k] is not None)
    return {**safe, "nonfinite": bad} if bad else record


def read_jsonl(path: str) -> list[dict]:
    """The records of a metrics JSONL file; a torn *last* line (a kill mid-append) is dropped.

    Raises:
        ValueError: any other line is not a JSON object (naming the file and line).
    """
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or "step" not in rec or "kind" not in rec:
                raise ValueError("not a metrics record")
        except ValueError as e:
            if i == len(lines) - 1:  # no newline after it: the append never finished
                break
            raise ValueError(f"{path} line {i + 1} is damaged ({e}); fix or delete that line") from None
        out.append(rec)
    return out


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
