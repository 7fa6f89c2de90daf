"""Hugging Face ``datasets``: local json/text/parquet files, or a hub dataset when online or cached."""
from __future__ import annotations

from typing import Iterator, Sequence

from .base import CorpusError, CorpusSource, Document


class HFDatasetSource(CorpusSource):
    """Rows of ``datasets.load_dataset(dataset, config, data_files=..., split=...)``, column ``text_field``.

    Examples: ``HFDatasetSource("json", data_files=["sw.jsonl"])`` for local files, or
    ``HFDatasetSource("wikimedia/wikipedia", config="20231101.sw")`` with a network or a warm cache.
    The split key is the cleaned text (hub rows carry no stable cross-language alignment).

    Raises:
        CorpusError: on :meth:`documents` if loading fails (the message says whether it was the network,
            a missing file or a missing column) or the dataset has no rows.
    """

    def __init__(self, dataset: str, config: str | None = None, data_files: Sequence[str] | None = None,
                 split: str = "train", text_field: str = "text", max_documents: int | None = None):
        self.dataset, self.config, self.split = dataset, config, split
        self.data_files = list(data_files) if data_files else None
        self.text_field, self.max_documents = text_field, max_documents

    def _load(self):
        import datasets  # imported lazily: it is slow to import and only this source needs it

        try:
            ds = datasets.load_dataset(self.dataset, self.config, data_files=self.data_files, split=self.split)
        except FileNotFoundError as e:
            raise CorpusError(f"datasets could not find {self.describe()}: {e}") from e
        except Exception as e:  # network errors surface as many types (ConnectionError, HfHubHTTPError...)
            raise CorpusError(f"datasets failed to load {self.describe()} ({type(e).__name__}: {e}). Without a "
                              f"network, use local files (dataset: json/text/parquet with data_files) or a "
                              f"pre-populated HF cache with HF_DATASETS_OFFLINE=1") from e
        if self.text_field not in ds.column_names:
            raise CorpusError(f"{self.describe()} has no column {self.text_field!r}; columns: {ds.column_names}"
                              f" (set text_field)")
        if self.max_documents is not None:
            ds = ds.select(range(min(self.max_documents, len(ds))))
        if len(ds) == 0:
            raise CorpusError(f"{self.describe()} has no rows")
        return ds

    def documents(self) -> Iterator[Document]:
        ds = self._load()
        for batch in ds.iter(batch_size=1000):
            for text in batch[self.text_field]:
                yield Document(text if isinstance(text, str) else "")

    def describe(self) -> str:
        parts = [f"datasets:{self.dataset}"]
        if self.config:
            parts.append(f"config={self.config}")
        if self.data_files:
            parts.append(f"data_files={self.data_files}")
        parts.append(f"split={self.split}")
        return " ".join(parts)
