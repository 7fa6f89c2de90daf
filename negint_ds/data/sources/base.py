"""The one interface every corpus source implements: an iterator of keyed text units, and its identity."""
from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterator


class CorpusError(RuntimeError):
    """A corpus cannot be read: missing or empty file, failed checksum, unknown column, no network."""


@dataclass(frozen=True)
class Document:
    """One unit of text (a Bible verse, a Wikipedia lead paragraph, a line of a text file).

    ``key`` decides the train/valid/test split (see :mod:`negint_ds.data.split`): units with the same
    key land in the same split, so a verse-aligned corpus splits identically in every language and a
    verse never crosses splits. ``key=None`` means "key by the cleaned text itself".
    """

    text: str
    key: str | None = None


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_record(path: str, previous: dict | None = None) -> dict | None:
    """``{"size", "mtime_ns", "sha256"}`` of a file, or None if it does not exist.

    Args:
        previous: an earlier record of the same file; when its size and mtime still match, its SHA-256
            is reused instead of reading the file again (what keeps checks at training start cheap).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    rec = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    same = previous and previous.get("sha256") and all(previous.get(k) == rec[k] for k in ("size", "mtime_ns"))
    rec["sha256"] = previous["sha256"] if same else sha256_file(path)
    return rec


class CorpusSource(ABC):
    """Gives the documents of one language. Implementations must be deterministic and re-iterable."""

    @abstractmethod
    def documents(self) -> Iterator[Document]:
        """Yield the documents in a stable order.

        Raises:
            CorpusError: the corpus is missing, empty or fails verification.
        """

    @abstractmethod
    def describe(self) -> str:
        """One line of provenance (file, package and version, dataset name) for logs and Table 1."""

    @abstractmethod
    def identity(self, previous: dict | None = None) -> dict:
        """What the documents are a function of, without reading them all: a JSON-serialisable mapping.

        Local files appear under ``"files"`` as ``{path: file_record(path) or None if missing}``; other
        entries (package versions, pinned SHA-256s, dataset names) are compared as values.

        Args:
            previous: this source's identity recorded earlier (a manifest's), to reuse file hashes
                whose size and mtime did not change.
        """
