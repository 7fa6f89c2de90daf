"""End-of-run report: the per-language perplexity table and the validation curves (paper Fig. 2)."""
from __future__ import annotations

import io

from ..atomic import atomic_write_bytes, atomic_write_json, atomic_write_text


def ppl_table(results: dict[str, dict[str, float]], step: int, first: dict[str, dict[str, float]] | None = None) -> str:
    """Markdown table of validation perplexity per language (with the first evaluation for comparison)."""
    head = "| language | valid ppl | valid loss (nats) |" + (" ppl at first eval |" if first else "")
    sep = "|---|---|---|" + ("---|" if first else "")
    rows = []
    for lang, r in results.items():
        row = f"| {lang} | {r['ppl']:.2f} | {r['loss']:.4f} |"
        if first:
            row += f" {first[lang]['ppl']:.2f} |"
        rows.append(row)
    return f"Validation perplexity at step {step}:\n\n" + "\n".join([head, sep, *rows]) + "\n"


def write_final(paths, results, step: int, first=None) -> str:
    """Write final_ppl.md/json; return the Markdown table."""
    table = ppl_table(results, step, first)
    atomic_write_text(paths.final_md, table)
    atomic_write_json(paths.final_json, {"step": step, "valid": results, "first_eval": first})
    return table


def plot_curves(valid_records: list[dict], langs: list[str], path: str, title: str = "") -> bool:
    """Validation perplexity against step, one line per language, log y-axis; returns False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for lang in langs:
        pts = [(r["step"], r[f"ppl_{lang}"]) for r in valid_records if f"ppl_{lang}" in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", markersize=3, label=lang)
    ax.set_xlabel("step")
    ax.set_ylabel("validation perplexity (MLM)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return True
