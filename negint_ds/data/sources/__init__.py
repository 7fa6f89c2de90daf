"""Corpus sources behind one interface (:class:`CorpusSource`), chosen per language by config."""
from __future__ import annotations

from .base import CorpusError, CorpusSource, Document, file_record, sha256_file
from .builtin import BibleSource, WikiSummarySource, default_cache_dir, fetch_wheel
from .hf_datasets import HFDatasetSource
from .text_files import TextFileSource

#: Sources that key their units themselves (a Bible verse, a Wikipedia article), whatever data.split.key says.
BUILTIN_SOURCES = ("bible", "wiki")


def is_aligned(source: str, split_key: str) -> bool:
    """Whether a language's split keys are shared with other languages' (verse ids, line numbers, fields).

    Built-in Bible verses are aligned across translations; Wikipedia titles are per language; text and
    hf sources are aligned when keyed by anything but their text.
    """
    return source == "bible" or (source not in BUILTIN_SOURCES and split_key != "text")


def source_for(lang_id: str, data_cfg) -> CorpusSource:
    """Build the source configured for ``data_cfg.languages[lang_id]`` (a :class:`~negint_ds.config.DataConfig`).

    Relative text/data file paths are taken as given (relative to the working directory).

    Raises:
        ValueError: ``data.split.key`` names a record field but the language reads a plain text file.
        CorpusError: unknown source, or a built-in corpus without that language.
    """
    lc = data_cfg.languages[lang_id]
    code = data_cfg.lang_code(lang_id)
    key = data_cfg.split.key
    if lc.source == "bible":
        return BibleSource(code, lc.translation, data_cfg.cache_dir, lc.max_documents)
    if lc.source == "wiki":
        return WikiSummarySource(code, data_cfg.cache_dir, lc.max_documents)
    if lc.source == "text":
        return TextFileSource(lc.path, lc.max_documents, key)
    if lc.source == "hf":
        return HFDatasetSource(lc.dataset, lc.hf_config, lc.data_files, lc.hf_split, lc.text_field, lc.max_documents,
                               key)
    raise CorpusError(f"languages.{lang_id}.source: unknown source {lc.source!r}")


__all__ = ["BUILTIN_SOURCES", "BibleSource", "CorpusError", "CorpusSource", "Document", "HFDatasetSource",
           "TextFileSource", "WikiSummarySource", "default_cache_dir", "fetch_wheel", "file_record", "is_aligned",
           "sha256_file", "source_for"]
