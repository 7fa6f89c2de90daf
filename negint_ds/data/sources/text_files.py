"""Local UTF-8 text files: one sentence or paragraph per line, one file per language."""
from __future__ import annotations

import os
from typing import Iterator

from .base import CorpusError, CorpusSource, Document, file_record


class TextFileSource(CorpusSource):
    """Lines of a local text file.

    Args:
        path: UTF-8 text file (``~`` and environment variables are expanded).
        max_documents: read at most this many lines (None = all).
        key: ``"text"``: split by the cleaned line itself; ``"line"``: by the 1-based line number in the
            file (``line:<n>``), counted before cleaning drops blank or duplicate lines, so line n of
            every language's file lands in the same split (aligned parallel text).

    Raises:
        ValueError: ``key`` is neither ``"text"`` nor ``"line"`` (plain lines have no fields).
        CorpusError: on :meth:`documents` if the file is missing, not UTF-8 (naming the line and byte
            offset), or has no non-blank line.
    """

    def __init__(self, path: str, max_documents: int | None = None, key: str = "text"):
        if key not in ("text", "line"):
            raise ValueError(f"a text file can be split by 'text' or 'line', not by field {key!r}")
        self.path = os.path.expandvars(os.path.expanduser(path))
        self.max_documents, self.key = max_documents, key

    def documents(self) -> Iterator[Document]:
        if not os.path.isfile(self.path):
            raise CorpusError(f"corpus file not found: {self.path}")
        n = nonblank = offset = 0
        # Binary lines decoded one at a time: a text-mode reader decodes ahead in chunks, so its error
        # could not say on which line the bad byte is.
        with open(self.path, "rb") as f:
            for raw in f:
                if self.max_documents is not None and n >= self.max_documents:
                    break
                n += 1
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise CorpusError(f"{self.path}: not valid UTF-8 on line {n} (byte offset {offset + e.start} "
                                      f"in the file, byte {e.start + 1} of the line: {e.reason}); re-encode the "
                                      f"file as UTF-8") from e
                offset += len(raw)
                line = line.rstrip("\r\n")
                if line.strip():
                    nonblank += 1
                yield Document(line, f"line:{n}" if self.key == "line" else None)
        if nonblank == 0:
            raise CorpusError(f"corpus file is empty (no non-blank line): {self.path}")

    def describe(self) -> str:
        return f"text file {self.path}"

    def identity(self, previous: dict | None = None) -> dict:
        prev = ((previous or {}).get("files") or {}).get(self.path)
        return {"kind": "text", "files": {self.path: file_record(self.path, prev)}}
