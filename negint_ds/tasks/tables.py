"""Downstream tables: one model's within-language / zero-shot / retrieval tables, and the paper-shaped comparison
of several models (rows Mono, JointPair, +ffn, …; columns task × language, as Tables 2 and 3).

    python -m negint_ds.tasks.tables --runs runs/mono_sw_demo runs/jointpair_en_sw_demo ... \
        --names Mono JointPair ... --out benchmarks/downstream/en_sw.md

Scores are percentages, mean ± sample std over seeds with the number of seeds in brackets.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _cell(row: dict, metric: str) -> str:
    return f"{100 * row[f'{metric}_mean']:.1f} ± {100 * row[f'{metric}_std']:.1f} ({row['n_seeds']})"


def builtin_tables(pre, summaries: list[dict]) -> str:
    """Markdown: within-language, zero-shot and retrieval tables of one pretrained model."""
    lines = [f"# Downstream results of {pre.run_dir} (step {pre.step})", ""]
    for setting, title in (("within", "Within-language (fine-tune and test in lg)"),
                           ("zero_shot", "Zero-shot cross-lingual (fine-tune in the source language, test in lg)")):
        rows = [(s, r) for s in summaries for r in s.get("rows", []) if r["setting"] == setting]
        if not rows:
            continue
        langs = list(dict.fromkeys(r["test_lang"] for _, r in rows))
        lines += [f"## {title}", "", "| task (metric) | source | " + " | ".join(langs) + " |",
                  "|---|---|" + "---|" * len(langs)]
        for task in dict.fromkeys((s["task"], s["metric"], r["train_lang"] if setting == "zero_shot" else "=lg")
                                  for s, r in rows):
            name, metric, src = task
            by = {r["test_lang"]: r for s, r in rows if s["task"] == name
                  and (setting == "within" or r["train_lang"] == src)}
            lines.append(f"| {name} ({metric}) | {src} | " + " | ".join(_cell(by[l], metric) if l in by else "–"
                                                                       for l in langs) + " |")
        lines.append("")
    for s in summaries:
        if "retrieval" in s:
            lines += [f"## {s['task']}: accuracy@1 (%), layer {s['retrieval'][0]['layer'] if s['retrieval'] else '–'}",
                      "", "| lg | pairs | lg → en | en → lg |", "|---|---|---|---|"]
            lines += [f"| {r['lang']} | {r['n']} | {100 * r['lang_to_pivot']:.1f} | {100 * r['pivot_to_lang']:.1f} |"
                      for r in s["retrieval"]]
            lines.append("")
    lines.append("Fine-tuned scores: mean ± sample std over seeds (number of seeds), hyper-parameters selected on "
                 "the dev set of the fine-tuning language (Appendix A).")
    return "\n".join(lines) + "\n"


def _load(run_dir: str) -> tuple[list[dict], list[dict]]:
    """Selected rows and retrieval rows of a downstream run directory (``<run>/downstream/builtin`` or given)."""
    rows, retr = [], []
    for d in sorted(os.listdir(run_dir)):
        p = os.path.join(run_dir, d)
        if os.path.isfile(os.path.join(p, "results.json")):
            with open(os.path.join(p, "results.json"), encoding="utf-8") as f:
                s = json.load(f)
            rows += [{**r, "metric": s["metric"]} for r in s["rows"]]
        elif d.endswith(".json") and d != "finetune.json":
            with open(p, encoding="utf-8") as f:
                retr += [{**r, "task": d[:-5]} for r in json.load(f)]
    return rows, retr


def comparison(run_dirs: list[str], names: list[str]) -> str:
    """Paper-shaped tables over models: one row per model, columns task × test language, per setting.

    Raises:
        ValueError: names and run_dirs differ in length; a directory holds no downstream results.
    """
    if len(names) != len(run_dirs):
        raise ValueError(f"{len(names)} names for {len(run_dirs)} runs")
    data = {}
    for n, d in zip(names, run_dirs):
        rows, retr = _load(d)
        if not rows and not retr:
            raise ValueError(f"{d} holds no downstream results (results.json per task or retrieval json)")
        data[n] = (rows, retr)
    out = []
    for setting, title in (("within", "Within-language"), ("zero_shot", "Zero-shot cross-lingual (from en)")):
        cols = list(dict.fromkeys((r["task"], r["metric"], r["test_lang"]) for rows, _ in data.values()
                                  for r in rows if r["setting"] == setting))
        if not cols:
            continue
        out += [f"## {title}", "", "| model | " + " | ".join(f"{t} {l} ({m})" for t, m, l in cols) + " |",
                "|---|" + "---|" * len(cols)]
        for n, (rows, _) in data.items():
            by = {(r["task"], r["metric"], r["test_lang"]): r for r in rows if r["setting"] == setting}
            out.append(f"| {n} | " + " | ".join(_cell(by[c], c[1]) if c in by else "–" for c in cols) + " |")
        out.append("")
    cols = list(dict.fromkeys((r["task"], r["lang"]) for _, retr in data.values() for r in retr))
    if cols:
        out += ["## Verse retrieval, accuracy@1 (%) lg → en / en → lg", "",
                "| model | " + " | ".join(f"{t} {l}" for t, l in cols) + " |", "|---|" + "---|" * len(cols)]
        for n, (_, retr) in data.items():
            by = {(r["task"], r["lang"]): r for r in retr}
            out.append(f"| {n} | " + " | ".join(
                f"{100 * by[c]['lang_to_pivot']:.1f} / {100 * by[c]['pivot_to_lang']:.1f}" if c in by else "–"
                for c in cols) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m negint_ds.tasks.tables", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="downstream run directories (one per model)")
    p.add_argument("--names", nargs="+", required=True, help="row names, e.g. Mono JointPair +ffn")
    p.add_argument("--out", default=None, help="write the markdown here too")
    a = p.parse_args(argv)
    try:
        text = comparison(a.runs, a.names)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    if a.out:
        from ..atomic import atomic_write_text

        atomic_write_text(a.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
