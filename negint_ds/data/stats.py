"""Corpus statistics in the form of the paper's Table 1 (per-language data sizes), as Markdown and CSV.

For aligned sources (Bible verses, or text/hf keyed by line number or a record field) the table adds
one column: how many of a language's valid/test keys are in another aligned language's train split.
It must be 0; anything else means a held-out sentence's translation is trained on.
"""
from __future__ import annotations

import csv
import io
from typing import Mapping, Sequence

from ..languages import language_name
from .sources.base import Document

COLUMNS = ["id", "language", "source", "train sentences", "valid sentences", "test sentences", "train tokens",
           "tokens/sentence", "dropped (empty/short/long/dup)"]
OVERLAP_COLUMN = "valid/test keys in other languages' train"


def heldout_overlap(splits_by_lang: Mapping[str, Mapping[str, Sequence[Document]]],
                    aligned: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per aligned language: its valid+test keys, and how many of them are in another aligned language's train.

    Args:
        splits_by_lang: {language id: {split: documents}} after splitting and subsampling.
        aligned: the language ids whose keys are comparable across languages.

    Returns:
        {language id: {"heldout_keys": n, "in_other_train": m}}; empty with fewer than two aligned languages.
    """
    if len(aligned) < 2:
        return {}
    train = {l: {d.key for d in splits_by_lang[l]["train"]} for l in aligned}
    out = {}
    for l in aligned:
        held = {d.key for s in ("valid", "test") for d in splits_by_lang[l][s]}
        others = set().union(*(train[m] for m in aligned if m != l))
        out[l] = {"heldout_keys": len(held), "in_other_train": len(held & others)}
    return out


def table_rows(manifest: dict) -> list[list]:
    """One row per language from a data manifest (see :mod:`negint_ds.data.prepare`), in config order.

    Counts are ints; the overlap cell (last, only when a language has ``heldout_overlap``) is a dict or None.
    """
    with_overlap = any("heldout_overlap" in info for info in manifest["languages"].values())
    rows = []
    for lang_id, info in manifest["languages"].items():
        sp = info["splits"]
        c = info["cleaning"]
        n_train, t_train = sp["train"]["sentences"], sp["train"]["tokens"]
        row = [lang_id, language_name(info["lang"]), info["source"], n_train, sp["valid"]["sentences"],
               sp["test"]["sentences"], t_train, f"{t_train / max(n_train, 1):.1f}",
               f"{c['empty']}/{c['too_short']}/{c['too_long']}/{c['duplicate']}"]
        if with_overlap:
            row.append(info.get("heldout_overlap"))
        rows.append(row)
    return rows


def _columns(rows: list[list]) -> list[str]:
    return COLUMNS + ([OVERLAP_COLUMN] if rows and len(rows[0]) > len(COLUMNS) else [])


def markdown_table(manifest: dict) -> str:
    """Table 1 as a Markdown table (tokens exclude the </s> separators)."""
    rows = table_rows(manifest)
    cols = _columns(rows)

    def cell(x) -> str:
        if isinstance(x, dict):
            return f"{x['in_other_train']:,} of {x['heldout_keys']:,}"
        return "–" if x is None else f"{x:,}" if isinstance(x, int) else str(x)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_table(manifest: dict) -> str:
    """Table 1 as CSV with plain integers (the overlap column: keys in other languages' train, or empty)."""
    rows = table_rows(manifest)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(_columns(rows))
    for r in rows:
        w.writerow([x["in_other_train"] if isinstance(x, dict) else "" if x is None else x for x in r])
    return buf.getvalue()
