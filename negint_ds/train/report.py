"""End-of-run report: the per-language perplexity table and the validation curves (paper Fig. 2)."""
from __future__ import annotations

import io

from ..atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from .ppl_interval import BOOTSTRAP_SAMPLES


def ppl_table(results: dict[str, dict], step: int, first: dict[str, dict] | None = None) -> str:
    """Markdown table of validation perplexity per language (with the first evaluation for comparison).

    Args:
        results: per language, as returned by :func:`~negint_ds.train.evaluate.evaluate`; ``ppl_lo``/``ppl_hi``,
            ``tokens`` and ``windows`` may be missing (shown as "–"); ``too_few_tokens`` (set by
            :func:`~negint_ds.train.evaluate.check_eval_sizes`) marks the language's token count with "‡".
        step: the step evaluated.
        first: the first evaluation's results, or None.

    Returns:
        The heading, the table, and a note on the interval (and on "‡" when a language is marked).
    """
    head = ("| language | valid ppl | 95% interval | masked tokens | windows | valid loss (nats) |"
            + (" ppl at first eval |" if first else ""))
    sep = "|---|---|---|---|---|---|" + ("---|" if first else "")
    rows = []
    for lang, r in results.items():
        lo, hi = r.get("ppl_lo"), r.get("ppl_hi")
        interval = f"{lo:.2f}–{hi:.2f}" if lo is not None and hi is not None else "–"
        tokens = f"{r['tokens']:,}" if r.get("tokens") is not None else "–"
        mark = " ‡" if r.get("too_few_tokens") else ""
        row = f"| {lang} | {r['ppl']:.2f} | {interval} | {tokens}{mark} | {r.get('windows', '–')} | {r['loss']:.4f} |"
        if first:
            row += f" {first[lang]['ppl']:.2f} |"
        rows.append(row)
    notes = [f"95% interval: percentile bootstrap over validation windows ({BOOTSTRAP_SAMPLES} resamples); "
             "– where there is none (fewer than 2 windows)."]
    if any(r.get("too_few_tokens") for r in results.values()):
        notes.append("‡ fewer masked tokens than train.min_eval_tokens: too few to compare this perplexity; "
                     "score more windows (train.eval_sequences, data.split.valid_fraction).")
    return (f"Validation perplexity at step {step}:\n\n" + "\n".join([head, sep, *rows]) + "\n\n"
            + "\n".join(notes) + "\n")


def write_final(paths, results, step: int, first=None) -> str:
    """Write final_ppl.md/json; return the Markdown table."""
    table = ppl_table(results, step, first)
    atomic_write_text(paths.final_md, table)
    atomic_write_json(paths.final_json, {"step": step, "valid": results, "first_eval": first})
    return table


def plot_curves(valid_records: list[dict], langs: list[str], path: str, title: str = "") -> bool:
    """Validation perplexity against step, one line per language, log y-axis; returns False without matplotlib.

    Where records carry ``ppl_lo_<lang>``/``ppl_hi_<lang>``, the 95% interval is drawn as a shaded band.
    """
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
            line, = ax.plot(*zip(*pts), marker="o", markersize=3, label=lang)
            band = [(r["step"], r[f"ppl_lo_{lang}"], r[f"ppl_hi_{lang}"]) for r in valid_records
                    if r.get(f"ppl_lo_{lang}") is not None and r.get(f"ppl_hi_{lang}") is not None]
            if band:
                ax.fill_between(*zip(*band), color=line.get_color(), alpha=0.2, linewidth=0)
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
