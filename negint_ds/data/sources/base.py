"""The one interface every corpus source implements: an iterator of keyed text units."""
from __future__ import annotations

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
