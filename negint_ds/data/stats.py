"""Corpus statistics in the form of the paper's Table 1 (per-language data sizes), as Markdown and CSV."""
from __future__ import annotations

import csv
import io

from ..languages import language_name

COLUMNS = ["id", "language", "source", "train sentences", "valid sentences", "test sentences", "train tokens",
           "tokens/sentence", "dropped (empty/short/long/dup)"]


def table_rows(manifest: dict) -> list[list[str]]:
    """One row per language from a data manifest (see :mod:`negint_ds.data.prepare`), in config order."""
    rows = []
    for lang_id, info in manifest["languages"].items():
        sp = info["splits"]
        c = info["cleaning"]
        n_train, t_train = sp["train"]["sentences"], sp["train"]["tokens"]
        rows.append([
            lang_id, language_name(info["lang"]), info["source"], f"{n_train:,}", f"{sp['valid']['sentences']:,}",
            f"{sp['test']['sentences']:,}", f"{t_train:,}", f"{t_train / max(n_train, 1):.1f}",
            f"{c['empty']}/{c['too_short']}/{c['too_long']}/{c['duplicate']}",
        ])
    return rows


def markdown_table(manifest: dict) -> str:
    """Table 1 as a Markdown table (tokens exclude the </s> separators)."""
    rows = table_rows(manifest)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_table(manifest: dict) -> str:
    """Table 1 as CSV with plain integers."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for r in table_rows(manifest):
        w.writerow([x.replace(",", "") if i in (3, 4, 5, 6) else x for i, x in enumerate(r)])
    return buf.getvalue()
