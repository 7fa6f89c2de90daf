"""Corpus sources behind one interface (:class:`CorpusSource`), chosen per language by config."""
from __future__ import annotations

from .base import CorpusError, CorpusSource, Document
from .builtin import BibleSource, WikiSummarySource, default_cache_dir, fetch_wheel, sha256_file
from .hf_datasets import HFDatasetSource
from .text_files import TextFileSource


def source_for(lang_id: str, data_cfg) -> CorpusSource:
    """Build the source configured for ``data_cfg.languages[lang_id]`` (a :class:`~negint_ds.config.DataConfig`).

    Relative text/data file paths are taken as given (relative to the working directory).
    """
    lc = data_cfg.languages[lang_id]
    code = data_cfg.lang_code(lang_id)
    if lc.source == "bible":
        return BibleSource(code, lc.translation, data_cfg.cache_dir, lc.max_documents)
    if lc.source == "wiki":
        return WikiSummarySource(code, data_cfg.cache_dir, lc.max_documents)
    if lc.source == "text":
        return TextFileSource(lc.path, lc.max_documents)
    if lc.source == "hf":
        return HFDatasetSource(lc.dataset, lc.hf_config, lc.data_files, lc.hf_split, lc.text_field, lc.max_documents)
    raise CorpusError(f"languages.{lang_id}.source: unknown source {lc.source!r}")


__all__ = ["BibleSource", "CorpusError", "CorpusSource", "Document", "HFDatasetSource", "TextFileSource",
           "WikiSummarySource", "default_cache_dir", "fetch_wheel", "sha256_file", "source_for"]
