"""Assemble an experiment's tables (markdown + CSV), figures and findings from whatever its runs have produced.

Every cell is mean ± std over seeds with the number of seeds (:mod:`.collect`); a run whose stage failed shows
``failed`` with its log path instead of numbers, and the others are reported as usual.
"""
from __future__ import annotations

import csv
import os
import shutil

from ..analysis.mask_layout import SIMILARITY_CSV, SIMILARITY_PNG
from ..analysis.tables import write_csv
from ..atomic import atomic_write_text
from .collect import LOWER_IS_BETTER, aggregate, cost_measurements, grad_conflict_rows, run_measurements
from .findings import findings, findings_markdown
from .plan import Plan, groups, parameter_counts


_BAD = ("failed", "blocked", "interrupted")


def _where(rec: dict, out_dir: str) -> str:
    """A bad stage's log (or reason), relative to the experiment directory."""
    where = rec.get("log") or rec.get("reason", "")
    return os.path.relpath(where, out_dir) if os.path.isabs(where) else where


def _failure(status: dict, run_ids: list[str], out_dir: str) -> str | None:
    for rid in run_ids:
        for stage, rec in status.get(rid, {}).items():
            if rec.get("state") in _BAD:
                return f"{rec['state']} ({stage}: {_where(rec, out_dir)})"
    return None


def _fmt(measure: str, agg) -> str:
    if measure in ("valid_ppl",):
        return agg.cell(digits=1)
    if measure == "bpc":
        return agg.cell(digits=3)
    return agg.cell(scale=100.0, digits=1)


def _runs_table(plan: Plan, status: dict) -> list[str]:
    lines = ["## Runs", "", "| run | row | languages | seed | " + "stages (state, seconds) | log of a failure |",
             "|---|---|---|---|---|---|"]
    for run in plan.runs:
        st = status.get(run.id, {})
        parts, bad = [], ""
        for s in run.stages:
            rec = st.get(s.name, {})
            state = rec.get("state", "todo")
            parts.append(f"{s.name} {state}" + (f" {rec['seconds']:.0f} s" if rec.get("seconds") else ""))
            if state in _BAD and not bad:
                bad = _where(rec, plan.out_dir)
        lines.append(f"| {run.id} | {run.row}{' ' + run.variant if run.variant else ''} | {'+'.join(run.langs)} | "
                     f"{run.seed} | {', '.join(parts)} | {bad} |")
    return lines + [""]


def _group_table(plan: Plan, status: dict, aggs: dict, group: str, measures: list[tuple[str, str]],
                 title: str) -> tuple[list[str], list[dict]]:
    """Rows × (measure, lang) columns for one group; failed runs say so where they have no number."""
    if not measures:
        return [], []
    head = [f"{m.split('/')[0]} {m.split('/')[-1]} {lang}" if "/" in m else f"{m} {lang}" for m, lang in measures]
    lines = [f"### {title}", "", "| row | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    csv_rows = []
    for row in plan.spec.rows:
        ids = [r.id for r in plan.runs if r.kind == "grid" and r.row == row and r.group == group]
        if not ids:
            continue
        fail = _failure(status, ids, plan.out_dir)
        cells = []
        for m, lang in measures:
            a = aggs.get((row, group, m, lang))
            cells.append(_fmt(m, a) if a else "–")  # the row name carries a failure and its log
            if a:
                csv_rows.append({"row": row, "group": group, "measure": m, "lang": lang, "mean": a.mean, "std": a.std,
                                 "n": a.n, "spread": a.spread, "seeds": " ".join(map(str, a.seeds))})
        name = f"{row} — {fail}" if fail else row
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    floors = [[a.floor for row in plan.spec.rows if (a := aggs.get((row, group, m, lang))) and a.floor is not None]
              for m, lang in measures]
    if any(floors):  # one data set per group, so every row's floor is the same: show it once
        lines.append("| *majority class* | " + " | ".join(f"*{100 * sum(f) / len(f):.1f}*" if f else "–"
                                                          for f in floors) + " |")
    return lines + [""], csv_rows


def _measures(aggs: dict, group: str, pred) -> list[tuple[str, str]]:
    seen = dict.fromkeys((k[2], k[3]) for k in aggs if k[1] == group and pred(k[2]))
    return sorted(seen, key=lambda x: (x[0], x[1]))


def _bar_figure(plan: Plan, aggs: dict, group: str, measures: list[tuple[str, str]], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in plan.spec.rows if any((r, group, m, l) in aggs for m, l in measures)]
    if not rows or not measures:
        return False
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(measures) * max(1, len(rows)) / 3, 3.6))
    w = 0.8 / len(rows)
    for i, row in enumerate(rows):
        xs, ys, es = [], [], []
        for j, (m, l) in enumerate(measures):
            a = aggs.get((row, group, m, l))
            if a:
                xs.append(j + i * w)
                ys.append(100 * a.mean)
                es.append(100 * (a.std or 0))
        ax.bar(xs, ys, w, yerr=es, capsize=2, label=row)
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(measures))])
    ax.set_xticklabels([f"{m.split('/')[0]}\n{m.split('/')[1]} {l}" for m, l in measures], fontsize=7)
    ax.set_ylabel("score (%)")
    ax.set_title(f"{plan.spec.name}: downstream, group {group} (mean ± std over seeds)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _scaling(plan: Plan, status: dict, aggs: dict) -> tuple[list[str], list[dict]]:
    """Per language and row: each measure against the number of languages (the curse-of-multilinguality table)."""
    gs = [g for g, _ in groups(plan.spec)]
    counts = {g: int(g[1:]) for g in gs}
    langs = list(dict.fromkeys(l for _, sl in groups(plan.spec) for l in sl))
    measures = sorted({k[2] for k in aggs if k[1] in counts})
    lines, csv_rows = ["## Scaling: each language's metric against the number of languages", ""], []
    for m in measures:
        lines += [f"### {m} ({'lower' if m in LOWER_IS_BETTER else 'higher'} is better)", "",
                  "| language | row | " + " | ".join(f"N = {counts[g]}" for g in gs) + " |",
                  "|---|---|" + "---|" * len(gs)]
        for lang in langs:
            for row in plan.spec.rows:
                cells = []
                for g in gs:
                    a = aggs.get((row, g, m, lang))
                    ids = [r.id for r in plan.runs if r.kind == "grid" and r.row == row and r.group == g]
                    cells.append(_fmt(m, a) if a else (_failure(status, ids, plan.out_dir) or "–"))
                    if a:
                        csv_rows.append({"row": row, "group": g, "n_langs": counts[g], "measure": m, "lang": lang,
                                         "mean": a.mean, "std": a.std, "n": a.n, "spread": a.spread})
                if any(c != "–" for c in cells):
                    lines.append(f"| {lang} | {row} | " + " | ".join(cells) + " |")
        lines.append("")
    if "bpc" in measures:
        lines += ["### Bits per character: first count with the language → largest count", "",
                  "Positive Δ: the language got worse as languages were added (the curse of multilinguality at fixed "
                  "model size); one seed, so read small Δ as noise.", "",
                  "| row | " + " | ".join(langs) + " |", "|---|" + "---|" * len(langs)]
        for row in plan.spec.rows:
            cells = []
            for lang in langs:
                pts = [(counts[g], aggs[(row, g, "bpc", lang)].mean) for g in gs if (row, g, "bpc", lang) in aggs]
                cells.append(f"{pts[-1][1] - pts[0][1]:+.3f} (N {pts[0][0]}→{pts[-1][0]})" if len(pts) > 1 else "–")
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines, csv_rows


def _scaling_figure(plan: Plan, rows: list[dict], measure: str, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rs = [r for r in rows if r["measure"] == measure]
    if not rs:
        return False
    langs = list(dict.fromkeys(r["lang"] for r in rs))
    fig, axes = plt.subplots(1, len(plan.spec.rows), figsize=(4 * len(plan.spec.rows), 3.4), squeeze=False)
    for ax, row in zip(axes[0], plan.spec.rows):
        for lang in langs:
            pts = sorted((r["n_langs"], r["mean"], r["std"] or 0) for r in rs if r["row"] == row and r["lang"] == lang)
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                            capsize=2, label=lang)
        ax.set_title(row, fontsize=9)
        ax.set_xlabel("languages in the model")
        ax.set_ylabel(measure, fontsize=8)
        ax.set_xscale("log", base=2)
        ns = sorted({r["n_langs"] for r in rs})
        ax.set_xticks(ns, [str(n) for n in ns])
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.suptitle(f"{plan.spec.name}: {measure} vs number of languages", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _cost(plan: Plan, status: dict, fig_path: str) -> tuple[list[str], list[dict]]:
    rows = cost_measurements(plan, status)
    if not rows:
        return [], []
    lines = ["## Cost: step time and peak memory against the number of languages", "",
             "Step time: median over training windows after the first (evaluation and saving excluded); memory: the "
             "pretraining process's peak resident set (CPU) from `status.json`.", "",
             "| row | variant | languages | state | s / step | peak RSS (MiB) |", "|---|---|---|---|---|---|"]
    for r in rows:
        st = r["state"] if r["state"] != "failed" else f"failed ({os.path.relpath(r['log'], plan.out_dir)})"
        step = "–" if r["step_s"] is None else f"{r['step_s']:.3f}"
        rss = "–" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f}"
        lines.append(f"| {r['row']} | {r['variant']} | {r['n_langs']} | {st} | {step} | {rss} |")
    lines.append("")
    phi = []
    for n in sorted({len(r.langs) for r in plan.runs if r.kind == "cost"}):
        run = next((r for r in plan.runs if r.kind == "cost" and len(r.langs) == n
                    and r.row in ("+adpt", "+meta adpt")), None)
        if run is not None:
            c = parameter_counts(run.recipe)
            phi.append((n, c))
    if phi:
        lines += ["Language adapters (φ) on every rank: fp32 weights + gradient + AdamW's two moments = 16 bytes per "
                  "parameter. φ has its own optimiser outside DeepSpeed, so ZeRO 1–2 partition only θ's optimiser "
                  "states and leave φ whole on every rank; ZeRO-3 is refused for models with φ.", "",
                  "| languages | θ parameters | φ per language | φ total (all languages) | φ memory per rank (MiB) |",
                  "|---|---|---|---|---|"]
        for n, c in phi:
            lines.append(f"| {n} | {c['theta']:,} | {c['phi_per_lang']:,} | {c['phi_per_lang'] * n:,} | "
                         f"{c['phi_bytes_total'] / 2 ** 20:.2f} |")
        lines.append("")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.5, 3.4))
        for key in dict.fromkeys((r["row"], r["variant"]) for r in rows):
            pts = sorted((r["n_langs"], r["step_s"], r["peak_rss_mib"]) for r in rows
                         if (r["row"], r["variant"]) == key and r["step_s"] is not None)
            if pts:
                label = key[0] + ("" if key[1] == "full sum" else f" ({key[1]})")
                a1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
                a2.plot([p[0] for p in pts], [p[2] or 0 for p in pts], marker="o", label=label)
        ns = sorted({r["n_langs"] for r in rows})
        for ax, label in ((a1, "seconds per step"), (a2, "peak RSS (MiB)")):
            ax.set(xlabel="languages in the model", ylabel=label)
            ax.set_xscale("log", base=2)
            ax.set_xticks(ns, [str(n) for n in ns])
        a1.legend(fontsize=7)
        fig.suptitle(f"{plan.spec.name}: cost against the number of languages", fontsize=10)
        fig.tight_layout()
        fig.savefig(fig_path, dpi=120)
        plt.close(fig)
        lines += [f"![cost](figures/{os.path.basename(fig_path)})", ""]
    except ImportError:
        pass
    return lines, rows


def _masks(plan: Plan, grid: list) -> list[str]:
    """Fig. 4a/4b: for each run with a mask report, the mean mask cosine over layers per (pair, component) — lg–en
    against the same-language controls of two mask seeds — and its figure, copied to ``figures/masks_<run>.png``."""
    lines, rows = [], []
    for run in grid:
        d = os.path.join(run.run_dir, "analysis")
        path = os.path.join(d, SIMILARITY_CSV)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            sims = [r for r in csv.DictReader(f) if r["cosine"] not in ("", "nan")]
        by: dict[tuple[str, str], list[float]] = {}
        for r in sims:
            by.setdefault((r["pair"], r["component"]), []).append(float(r["cosine"]))
        for (pair, comp), vals in sorted(by.items()):
            rows.append({"run": run.id, "pair": pair, "component": comp, "layers": len(vals),
                         "mean_cosine": sum(vals) / len(vals), "min_cosine": min(vals)})
        png = os.path.join(d, SIMILARITY_PNG)
        if os.path.isfile(png):
            shutil.copyfile(png, os.path.join(plan.out_dir, "figures", f"masks_{run.id}.png"))
            lines += [f"![masks {run.id}](figures/masks_{run.id}.png)", ""]
    if not rows:
        return []
    write_csv(rows, ("run", "pair", "component", "layers", "mean_cosine", "min_cosine"),
              os.path.join(plan.out_dir, "tables", "masks.csv"))
    head = ["## Fig. 4a/4b: per-language L0 masks on the frozen model (cosine of π, mean and minimum over layers)",
            "", "lg–en compares two languages' masks; lg–lg and en–en compare two mask seeds of one language (the "
            "control).", "", "| run | pair | component | mean | min |", "|---|---|---|---|---|"]
    head += [f"| {r['run']} | {r['pair']} | {r['component']} | {r['mean_cosine']:.3f} | {r['min_cosine']:.3f} |"
             for r in rows]
    return head + [""] + lines


def build_report(plan: Plan, status: dict) -> str:
    """Write ``report.md``, ``tables/*.md|csv``, ``figures/*.png`` and (pairs grids) ``findings.md``; return the
    report text."""
    out = plan.out_dir
    os.makedirs(os.path.join(out, "tables"), exist_ok=True)
    os.makedirs(os.path.join(out, "figures"), exist_ok=True)
    grid = [r for r in plan.runs if r.kind == "grid"]
    ms = [m for r in grid for m in run_measurements(r)]
    aggs = aggregate(ms)
    write_csv([vars(m) for m in ms], ("run", "row", "group", "seed", "measure", "lang", "value", "ft_std", "ft_n",
                                      "floor"),
              os.path.join(out, "tables", "measurements.csv"))
    spec = plan.spec
    lines = [f"# Experiment {spec.name}", "", spec.description, "",
             f"Spec `{plan.spec_file}`; rows {', '.join(spec.rows)}; pretraining seeds {spec.seeds}. Cells: mean ± "
             "sample std (n seeds); '(n ft)' marks a spread over fine-tuning seeds of one pretrained model. Scores in "
             "percent; perplexity per piece (not comparable across vocabularies: compare bits per character).", ""]
    lines += _runs_table(plan, status)
    all_csv = []
    if spec.scaling is None:
        for section, pred, fname in (
                ("Pretraining: validation perplexity and bits per character", lambda m: m in ("valid_ppl", "bpc"),
                 "pretrain"),
                ("Within-language (fine-tune and test in lg)", lambda m: "/within/" in m, "within"),
                ("Zero-shot cross-lingual (fine-tune in en, test in lg)", lambda m: "/zero_shot/" in m, "zero_shot"),
                ("Verse retrieval (accuracy@1, %)", lambda m: "retrieval/" in m, "retrieval")):
            block = [f"## {section}", ""]
            rows_csv = []
            for g, _ in groups(spec):
                t, c = _group_table(plan, status, aggs, g, _measures(aggs, g, pred), f"group {g}")
                block += t
                rows_csv += c
            if rows_csv:
                lines += block
                write_csv(rows_csv, ("row", "group", "measure", "lang", "mean", "std", "n", "spread", "seeds"),
                          os.path.join(out, "tables", f"{fname}.csv"))
                atomic_write_text(os.path.join(out, "tables", f"{fname}.md"), "\n".join(block) + "\n")
                all_csv += rows_csv
        for g, _ in groups(spec):
            ds = _measures(aggs, g, lambda m: "/within/" in m or "/zero_shot/" in m)
            png = os.path.join(out, "figures", f"downstream_{g}.png")
            if _bar_figure(plan, aggs, g, ds, png):
                lines += [f"![downstream {g}](figures/downstream_{g}.png)", ""]
        lines += _masks(plan, grid)
        probes = {g: [r for run in grid if run.group == g and run.row == "JointPair" for r in grad_conflict_rows(run)]
                  for g, _ in groups(spec)}
        items = findings(spec, aggs, probes)
        fm = findings_markdown(items)
        atomic_write_text(os.path.join(out, "findings.md"), fm)
        lines += [fm.replace("# Findings", "## Findings", 1)]
    else:
        t, rows_csv = _scaling(plan, status, aggs)
        lines += t
        if rows_csv:
            write_csv(rows_csv, ("row", "group", "n_langs", "measure", "lang", "mean", "std", "n", "spread"),
                      os.path.join(out, "tables", "scaling.csv"))
            atomic_write_text(os.path.join(out, "tables", "scaling.md"), "\n".join(t) + "\n")
            for m in sorted({r["measure"] for r in rows_csv}):
                name = m.replace("/", "_").replace(">", "").replace("-", "_")
                if _scaling_figure(plan, rows_csv, m, os.path.join(out, "figures", f"scaling_{name}.png")):
                    lines += [f"![{m}](figures/scaling_{name}.png)", ""]
        c, cost_rows = _cost(plan, status, os.path.join(out, "figures", "cost.png"))
        if cost_rows:
            write_csv(cost_rows, ("run", "row", "variant", "n_langs", "state", "step_s", "peak_rss_mib", "log"),
                      os.path.join(out, "tables", "cost.csv"))
            atomic_write_text(os.path.join(out, "tables", "cost.md"), "\n".join(c) + "\n")
            lines += c
    for fig in sorted(os.listdir(os.path.join(out, "figures"))):
        if fig.startswith(("grad_conflict", "warmup")) and fig.endswith(".png"):
            lines += [f"![{fig}](figures/{fig})", ""]
    text = "\n".join(lines) + "\n"
    atomic_write_text(os.path.join(out, "report.md"), text)
    return text


__all__ = ["build_report"]
