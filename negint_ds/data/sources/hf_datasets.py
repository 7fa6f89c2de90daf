"""Hugging Face ``datasets``: local json/text/parquet files, or a hub dataset when online or cached."""
from __future__ import annotations

import glob
import json
import os
from typing import Iterator, Sequence

from .base import CorpusError, CorpusSource, Document, file_record

#: Packaged builders that read ``data_files`` from the local disk (anything else names a hub dataset).
LOCAL_BUILDERS = ("json", "text", "csv", "parquet", "arrow", "pandas")


class HFDatasetSource(CorpusSource):
    """Rows of ``datasets.load_dataset(dataset, config, data_files=..., split=...)``, column ``text_field``.

    Examples: ``HFDatasetSource("json", data_files=["sw.jsonl"])`` for local files, or
    ``HFDatasetSource("wikimedia/wikipedia", config="20231101.sw")`` with a network or a warm cache.

    Args:
        key: what splits the rows (``data.split.key``): ``"text"``, the cleaned text; ``"line"``, the
            row number (row i, counted from 0, gets ``line:<i+1>``, the key of line i+1 of a text file,
            so a JSONL file and a text file can be aligned); anything else names a field of every
            record (e.g. a verse id): rows with the same value share a split in every language.

    Raises:
        CorpusError: on :meth:`documents` if loading fails (the message says whether it was a missing
            file, a malformed local file (naming it and, for JSON, the line) or possibly the network), a
            column is missing, a record has no value for the key field, or the dataset has no rows.
    """

    def __init__(self, dataset: str, config: str | None = None, data_files: Sequence[str] | None = None,
                 split: str = "train", text_field: str = "text", max_documents: int | None = None,
                 key: str = "text"):
        self.dataset, self.config, self.split = dataset, config, split
        self.data_files = list(data_files) if data_files else None
        self.text_field, self.max_documents, self.key = text_field, max_documents, key

    @property
    def key_field(self) -> str | None:
        """The record field that splits the rows, or None when keyed by text or row number."""
        return None if self.key in ("text", "line") else self.key

    def local_files(self) -> list[str] | None:
        """The local files ``data_files`` expands to (globs sorted), or None if this is not a local builder."""
        if self.dataset not in LOCAL_BUILDERS or not self.data_files:
            return None
        out = []
        for pattern in self.data_files:
            p = os.path.expandvars(os.path.expanduser(pattern))
            out += sorted(glob.glob(p)) if glob.has_magic(p) else [p]
        return out

    def _load(self):
        import datasets  # imported lazily: it is slow to import and only this source needs it

        try:
            ds = datasets.load_dataset(self.dataset, self.config, data_files=self.data_files, split=self.split)
        except FileNotFoundError as e:
            raise CorpusError(f"datasets could not find {self.describe()}: {e}") from e
        except Exception as e:  # network errors surface as many types (ConnectionError, HfHubHTTPError...)
            local = self.local_files()
            if local and all(os.path.isfile(p) for p in local):
                raise CorpusError(_local_failure(self.dataset, local, e)) from e
            raise CorpusError(f"datasets failed to load {self.describe()} ({_chain(e)}). Without a network, use "
                              f"local files (dataset: json/text/parquet with data_files) or a pre-populated HF "
                              f"cache with HF_DATASETS_OFFLINE=1") from e
        for col, what in ((self.text_field, "set text_field"), (self.key_field, "data.split.key")):
            if col is not None and col not in ds.column_names:
                raise CorpusError(f"{self.describe()} has no column {col!r}; columns: {ds.column_names} ({what})")
        if self.max_documents is not None:
            ds = ds.select(range(min(self.max_documents, len(ds))))
        if len(ds) == 0:
            raise CorpusError(f"{self.describe()} has no rows")
        return ds

    def documents(self) -> Iterator[Document]:
        ds = self._load()
        field = self.key_field
        ds = ds.select_columns([self.text_field] + ([field] if field and field != self.text_field else []))
        row = 0
        for batch in ds.iter(batch_size=1000):
            values = batch[field] if field else None
            for j, text in enumerate(batch[self.text_field]):
                row += 1
                key = None
                if self.key == "line":
                    key = f"line:{row}"
                elif field:
                    if values[j] is None:
                        where = self.local_files() or [self.describe()]
                        raise CorpusError(f"{where[0] if len(where) == 1 else self.describe()}: record {row} has "
                                          f"no value for field {field!r} (data.split.key)")
                    key = f"field:{field}={values[j]}"
                yield Document(text if isinstance(text, str) else "", key)

    def describe(self) -> str:
        parts = [f"datasets:{self.dataset}"]
        if self.config:
            parts.append(f"config={self.config}")
        if self.data_files:
            parts.append(f"data_files={self.data_files}")
        parts.append(f"split={self.split}")
        return " ".join(parts)

    def identity(self, previous: dict | None = None) -> dict:
        # A hub dataset without a pinned revision can change unseen: its identity is its name only.
        out = {"kind": "hf", "dataset": self.dataset, "config": self.config, "split": self.split,
               "data_files": self.data_files}
        local = self.local_files()
        if local is not None:
            prev = (previous or {}).get("files") or {}
            out["files"] = {p: file_record(p, prev.get(p)) for p in local}
        return out


def _chain(e: BaseException) -> str:
    """``Type: message`` of an exception and its causes (datasets wraps the informative one)."""
    parts, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts.append(f"{type(e).__name__}: {str(e).strip()}")
        e = e.__cause__ or e.__context__
    return " <- ".join(parts)


def malformed_json_line(path: str) -> str | None:
    """Where a local JSON / JSON Lines file fails to parse (``"line N: reason"``), or None if it parses."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return f"line {line}: not valid UTF-8 ({e.reason})"
    try:
        json.loads(text)
        return None  # one JSON document
    except json.JSONDecodeError as e:
        if text.lstrip().startswith("["):
            return f"line {e.lineno}, column {e.colno}: {e.msg}"
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as e:
                return f"line {n}, column {e.colno}: {e.msg}"
    return None


def _local_failure(dataset: str, files: list[str], e: Exception) -> str:
    """The error for local files that exist but could not be loaded: malformed, not a network problem."""
    if dataset == "json":
        for path in files:
            where = malformed_json_line(path)
            if where:
                return (f"{path} is malformed JSON ({where}); fix that record. This is a problem with the file, "
                        f"not with the network (datasets said: {_chain(e)})")
    return (f"datasets could not read the local file(s) {files} as {dataset!r}: they are malformed or not in that "
            f"format; this is a problem with the file(s), not with the network (datasets said: {_chain(e)})")
