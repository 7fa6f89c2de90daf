"""Local UTF-8 text files: one sentence or paragraph per line, one file per language."""
from __future__ import annotations

import os
from typing import Iterator

from .base import CorpusError, CorpusSource, Document


class TextFileSource(CorpusSource):
    """Lines of a local text file; the split key is the cleaned line itself.

    Args:
        path: UTF-8 text file (``~`` and environment variables are expanded).
        max_documents: read at most this many lines (None = all).

    Raises:
        CorpusError: on :meth:`documents` if the file is missing, not UTF-8, or has no non-blank line.
    """

    def __init__(self, path: str, max_documents: int | None = None):
        self.path = os.path.expandvars(os.path.expanduser(path))
        self.max_documents = max_documents

    def documents(self) -> Iterator[Document]:
        if not os.path.isfile(self.path):
            raise CorpusError(f"corpus file not found: {self.path}")
        n = nonblank = 0
        with open(self.path, encoding="utf-8", errors="strict") as f:
            try:
                for line in f:
                    if self.max_documents is not None and n >= self.max_documents:
                        break
                    n += 1
                    if line.strip():
                        nonblank += 1
                    yield Document(line.rstrip("\n"))
            except UnicodeDecodeError as e:
                raise CorpusError(f"{self.path}: not valid UTF-8 near line {n + 1}: {e}") from e
        if nonblank == 0:
            raise CorpusError(f"corpus file is empty (no non-blank line): {self.path}")

    def describe(self) -> str:
        return f"text file {self.path}"
