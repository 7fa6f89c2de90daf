"""Line cleaning: Unicode normalisation, whitespace folding, length limits and de-duplication."""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Iterable

from .sources.base import Document


@dataclass
class CleanStats:
    """What cleaning kept and dropped for one language (counts of documents)."""

    read: int = 0
    kept: int = 0
    empty: int = 0
    too_short: int = 0
    too_long: int = 0
    duplicate: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def clean_text(text: str, normalization: str = "NFC") -> str:
    """Normalise (NFC/NFKC/none) and fold every run of Unicode whitespace, newlines included, to one space.

    Folding newlines keeps a paragraph a single line of the stream format.
    """
    if normalization != "none":
        text = unicodedata.normalize(normalization, text)
    return " ".join(text.split())


@dataclass
class Cleaner:
    """Cleans a stream of documents; keeps first occurrences of duplicate texts.

    De-duplication runs over the whole language *before* the split, so an identical line can never sit
    in two splits. Lengths are in characters after cleaning (scripts without spaces count fairly).
    """

    normalization: str = "NFC"
    min_chars: int = 1
    max_chars: int = 5000
    dedupe: bool = True
    stats: CleanStats = field(default_factory=CleanStats)

    @classmethod
    def from_config(cls, cfg) -> "Cleaner":
        """From a :class:`~negint_ds.config.CleaningConfig`."""
        return cls(cfg.normalization, cfg.min_chars, cfg.max_chars, cfg.dedupe)

    def __call__(self, docs: Iterable[Document]) -> list[Document]:
        seen: set[str] = set()
        out = []
        for doc in docs:
            self.stats.read += 1
            text = clean_text(doc.text, self.normalization)
            if not text:
                self.stats.empty += 1
            elif len(text) < self.min_chars:
                self.stats.too_short += 1
            elif len(text) > self.max_chars:
                self.stats.too_long += 1
            elif self.dedupe and text in seen:
                self.stats.duplicate += 1
            else:
                seen.add(text)
                out.append(Document(text, doc.key if doc.key is not None else f"text:{text}"))
        self.stats.kept = len(out)
        return out
