"""Steady-state tokens/s of a DeepSpeed run from its metrics.jsonl (median of logging windows after warm-up).

    python benchmarks/summarize.py RUN/metrics.jsonl [--skip 2]
"""
from __future__ import annotations

import argparse
import json
import statistics


def steady_tokens_per_s(path: str, skip: int = 2) -> dict:
    """Median and min/max tokens/s over the train windows after the first ``skip`` (compile, warm-up)."""
    with open(path, encoding="utf-8") as f:
        recs = [r for r in map(json.loads, f) if r["kind"] == "train"]
    tps = [r["tokens_per_s"] for r in recs[skip:]]
    valid = [r for r in map(json.loads, open(path, encoding="utf-8")) if r["kind"] == "valid"]
    return {"windows": len(tps), "median_tokens_per_s": statistics.median(tps), "min": min(tps), "max": max(tps),
            "first_loss": recs[0]["loss"], "last_loss": recs[-1]["loss"],
            "valid": [{k: v for k, v in r.items() if k.startswith("ppl_") or k == "step"} for r in valid]}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("metrics")
    p.add_argument("--skip", type=int, default=2)
    a = p.parse_args()
    print(json.dumps(steady_tokens_per_s(a.metrics, a.skip)))
