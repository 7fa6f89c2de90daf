"""CSV tables of the analyses: one formatting rule for every file a figure is written beside."""
from __future__ import annotations

import csv
import io
from typing import Mapping, Sequence

from ..atomic import atomic_write_text


def csv_text(rows: Sequence[Mapping], columns: Sequence[str], header: bool = True) -> str:
    """``rows`` as CSV text: floats with full precision (``repr``; NaN stays ``nan``), None as an empty cell,
    keys outside ``columns`` ignored and missing ones empty."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    if header:
        w.writeheader()
    for r in rows:
        w.writerow({c: "" if v is None else repr(v) if isinstance(v, float) else v for c, v in r.items()})
    return buf.getvalue()


def write_csv(rows: Sequence[Mapping], columns: Sequence[str], path: str) -> None:
    """:func:`csv_text` written atomically to ``path``."""
    atomic_write_text(path, csv_text(rows, columns))


__all__ = ["csv_text", "write_csv"]
