"""Data preparation: sources → cleaning → split → subsample → shared vocabulary → binarised streams.

Writes ``data.dir``::

    manifest.json            what was built from what: fingerprint, config, source and output checksums, counts
    spm.model / spm.vocab    the shared SentencePiece vocabulary
    <id>.<split>.bin         token streams (see :mod:`negint_ds.data.binarized`)
    text/<id>.<split>.txt    the cleaned text of each split (for inspection and downstream work)
    stats.md / stats.csv     Table 1

Preparation is content-addressed (see :mod:`negint_ds.data.fingerprint`): a directory prepared from the
same data config is up to date only if every source's content and every output file are still what the
manifest records; otherwise it is rebuilt from the earliest stale stage (stats alone, token files from
the kept text and vocabulary, or everything).

A full build happens beside the destination and is renamed into place only when complete, so a crash
never leaves a half-prepared directory that training would accept; a directory prepared from another
data config is replaced only with ``overwrite=True``, and one without a manifest never.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import shutil

from tqdm.auto import tqdm

from .. import __version__
from ..atomic import atomic_write_json, atomic_write_text
from ..config import ConfigError, DataConfig, to_mapping
from ..languages import language_name
from .binarized import write_binarized
from .clean import Cleaner
from .fingerprint import Stale, config_diff, data_fingerprint, earliest_stage, find_stale, output_records
from .sources import BUILTIN_SOURCES, CorpusError, CorpusSource, is_aligned, source_for
from .split import SPLITS, split_documents, subsample
from .stats import csv_table, heldout_overlap, markdown_table
from .vocab import EOS_ID, N_SPECIAL, PREPARE_COMMAND, UNK_ID, Vocabulary, train_vocabulary

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
FORMAT_VERSION = 2


class DataPrepError(RuntimeError):
    """Preparation cannot proceed, or prepared data is missing, foreign, stale or from another config."""


def read_manifest(data_dir: str) -> dict | None:
    """The manifest of a prepared directory, or None if there is none.

    Raises:
        DataPrepError: ``manifest.json`` exists but is not valid JSON.
    """
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataPrepError(f"{path} is corrupt ({e}); rebuild the directory with "
                            f"`{PREPARE_COMMAND} --overwrite`") from e


def sources_for(cfg: DataConfig) -> dict[str, CorpusSource]:
    """The configured source of every language, checked before any work.

    Raises:
        ConfigError: ``data.split.key`` names a record field but a language reads a plain text file.
        CorpusError: a built-in corpus lacks a language.
    """
    key = cfg.split.key
    bad = [l for l, lc in cfg.languages.items() if lc.source == "text" and key not in ("text", "line")]
    if bad:
        raise ConfigError([f"data.split.key: {key!r} names a record field, but languages.{l} reads a plain text "
                           f"file (source: text), whose lines have no fields; use 'text' or 'line', or give it "
                           f"as JSON Lines (source: hf, dataset: json)" for l in bad], source="data config")
    return {l: source_for(l, cfg) for l in cfg.languages}


def identities(sources: dict[str, CorpusSource], recorded: dict | None = None) -> dict[str, dict]:
    """{language id: source identity}, reusing ``recorded`` file hashes whose size and mtime are unchanged."""
    recorded = (recorded or {}).get("sources") or {}
    return {l: s.identity(recorded.get(l)) for l, s in sources.items()}


def prepare_data(cfg: DataConfig, overwrite: bool = False, progress: bool = True) -> dict:
    """Build ``cfg.dir`` unless it is already prepared from this config and these sources; return its manifest.

    A directory prepared from the same data config but stale (a source's content changed, an output file
    is missing or changed) is rebuilt without ``overwrite``, from its earliest stale stage.

    Raises:
        ConfigError: ``data.split.key`` cannot apply to a language's source.
        DataPrepError: ``cfg.dir`` holds something else, or was prepared from another data config and
            ``overwrite`` is False; a corpus is empty after cleaning; a split is empty.
        CorpusError: a source cannot be read (missing file, malformed record, failed download or checksum).
        VocabularyError: SentencePiece training failed.
    """
    sources = sources_for(cfg)
    try:
        existing = read_manifest(cfg.dir) if os.path.isdir(cfg.dir) else None
    except DataPrepError:
        if not overwrite:
            raise
        existing = {}  # a corrupt manifest of ours: replaced on request
    if os.path.exists(cfg.dir) and (not os.path.isdir(cfg.dir) or os.listdir(cfg.dir)):
        if existing is None:  # never delete what we did not make, --overwrite or not
            raise DataPrepError(f"{cfg.dir} exists and is not a negint_ds data directory (no manifest.json); "
                                f"refusing to touch it. Choose another data.dir (--set data.dir=...)")
        if not overwrite and config_diff(existing.get("data_config"), cfg):
            raise DataPrepError(f"{cfg.dir} was prepared from a different data config; refusing to overwrite it. "
                                f"Choose another data.dir (--set data.dir=...) or pass --overwrite to replace it")
    ids = identities(sources, existing)
    if existing and not overwrite:
        stale = find_stale(existing, cfg.dir, ids)
        if not stale:
            log.info("data in %s is up to date (fingerprint %s); nothing to do", cfg.dir, existing["fingerprint"][:12])
            return existing
        for s in stale:
            log.warning("%s: %s", cfg.dir, s)
        refreshed = _refresh(cfg.dir, existing, stale)
        if refreshed is not None:
            return refreshed
        log.info("rebuilding %s from its sources", cfg.dir)

    parent = os.path.dirname(os.path.abspath(cfg.dir))
    os.makedirs(parent, exist_ok=True)
    work = os.path.join(parent, f".{os.path.basename(os.path.abspath(cfg.dir))}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "text"))
    try:
        manifest = _build(cfg, sources, ids, work, progress)
        if os.path.exists(cfg.dir):
            old = f"{work}.old"
            os.replace(cfg.dir, old)
            os.replace(work, cfg.dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, cfg.dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


def _build(cfg: DataConfig, sources: dict[str, CorpusSource], ids: dict[str, dict], work: str,
           progress: bool) -> dict:
    splits_by_lang: dict[str, dict[str, list]] = {}
    lang_info: dict[str, dict] = {}
    for lang_id, lc in cfg.languages.items():
        src = sources[lang_id]
        cleaner = Cleaner.from_config(cfg.cleaning)
        docs = cleaner(tqdm(src.documents(), desc=f"read {lang_id}", unit=" lines", disable=not progress,
                            leave=False))
        if not docs:
            raise DataPrepError(f"languages.{lang_id}: no text left after cleaning ({src.describe()}; "
                                f"{cleaner.stats.as_dict()})")
        sp = split_documents(docs, cfg.split.valid_fraction, cfg.split.test_fraction, cfg.split.salt)
        if lc.max_train_sentences is not None:
            sp["train"] = subsample(sp["train"], lc.max_train_sentences, cfg.split.salt)
        for name in SPLITS:
            if not sp[name] and (name != "test" or cfg.split.test_fraction > 0):
                raise DataPrepError(f"languages.{lang_id}: the {name} split is empty ({len(docs)} documents); "
                                    f"use more text or a larger data.split.{name}_fraction")
        splits_by_lang[lang_id] = sp
        code = cfg.lang_code(lang_id)
        key = "unit id" if lc.source in BUILTIN_SOURCES else cfg.split.key
        lang_info[lang_id] = {"lang": code, "name": language_name(code), "source": src.describe(),
                              "split_key": key, "cleaning": cleaner.stats.as_dict()}
        for name in SPLITS:
            atomic_write_text(os.path.join(work, "text", f"{lang_id}.{name}.txt"),
                              "".join(d.text + "\n" for d in sp[name]))
        log.info("%s: %s — kept %d of %d lines; train/valid/test = %d/%d/%d", lang_id, src.describe(),
                 cleaner.stats.kept, cleaner.stats.read, *(len(sp[s]) for s in SPLITS))
    aligned = [l for l, lc in cfg.languages.items() if is_aligned(lc.source, cfg.split.key)]
    for lang_id, overlap in heldout_overlap(splits_by_lang, aligned).items():
        lang_info[lang_id]["heldout_overlap"] = overlap
        if overlap["in_other_train"]:
            log.warning("%s: %d of its %d valid/test keys are in another language's train split", lang_id,
                        overlap["in_other_train"], overlap["heldout_keys"])

    v = cfg.vocab
    log.info("training a %d-piece SentencePiece %s vocabulary on a T=%.2f mix", v.size, v.model_type, v.temperature)
    vocab = train_vocabulary({l: [d.text for d in s["train"]] for l, s in splits_by_lang.items()},
                             os.path.join(work, "spm"), v.size, v.model_type, v.temperature, v.sample_sentences,
                             v.character_coverage, v.seed)

    for lang_id, sp in splits_by_lang.items():
        lang_info[lang_id]["splits"] = {}
        for name in tqdm(SPLITS, desc=f"binarise {lang_id}", disable=not progress, leave=False):
            fname = f"{lang_id}.{name}.bin"
            lang_info[lang_id]["splits"][name] = _binarise(vocab, [d.text for d in sp[name]], work, fname, lang_id,
                                                           name)

    manifest = {
        "format": "negint_ds.data", "format_version": FORMAT_VERSION, "fingerprint": data_fingerprint(cfg, ids),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "negint_ds_version": __version__, "data_config": to_mapping(cfg), "sources": ids,
        "vocab": {"file": "spm.model", "sha256": vocab.sha256, "size": vocab.size, "mask_id": vocab.mask_id,
                  "n_special": N_SPECIAL},
        "languages": lang_info,
    }
    _write_stats(work, manifest)
    manifest["outputs"] = output_records(work)
    atomic_write_json(os.path.join(work, MANIFEST), manifest)  # written last: marks the directory complete
    return manifest


def _binarise(vocab: Vocabulary, texts: list[str], directory: str, fname: str, lang_id: str, split: str) -> dict:
    """Encode and write one token file; its manifest entry."""
    ids = vocab.encode(texts)
    h = write_binarized(os.path.join(directory, fname), ids, EOS_ID, vocab.size, vocab.sha256, lang_id, split)
    unk = sum(t == UNK_ID for s in ids for t in s)
    return {"file": fname, "sentences": h["num_sentences"], "tokens": h["num_tokens"] - h["num_sentences"],
            "unk_tokens": int(unk), "sha256": h["sha256"]}


def _write_stats(directory: str, manifest: dict) -> None:
    atomic_write_text(os.path.join(directory, "stats.md"), markdown_table(manifest))
    atomic_write_text(os.path.join(directory, "stats.csv"), csv_table(manifest))


def _refresh(directory: str, manifest: dict, stale: list[Stale]) -> dict | None:
    """Rebuild in place what only the stats or token-file stages need; None if an earlier stage is stale.

    Token files are re-encoded from the kept text with the kept vocabulary (both checked intact); each
    file is replaced atomically and the manifest rewritten last, so an interruption leaves a directory
    that the next check finds stale again, never one that passes with wrong data.
    """
    stage = earliest_stage(stale)
    if stage not in ("binarised", "stats"):
        return None
    if stage == "binarised":
        vocab = Vocabulary(os.path.join(directory, manifest["vocab"]["file"]))
        files = {s.file for s in stale if s.stage == "binarised"}
        for lang_id, info in manifest["languages"].items():
            for split, entry in info["splits"].items():
                if entry["file"] not in files:
                    continue
                text_path = os.path.join(directory, "text", f"{lang_id}.{split}.txt")
                with open(text_path, encoding="utf-8", newline="") as f:
                    texts = f.read().split("\n")[:-1]  # as written: one cleaned line each
                if _binarise(vocab, texts, directory, entry["file"], lang_id, split) != entry:
                    log.warning("re-encoding %s did not reproduce it", entry["file"])
                    return None
    log.info("rewrote %s in %s", ", ".join(sorted(s.file or s.what for s in stale)), directory)
    _write_stats(directory, manifest)
    manifest = {**manifest, "outputs": output_records(directory, manifest["outputs"], names=manifest["outputs"])}
    atomic_write_json(os.path.join(directory, MANIFEST), manifest)
    return manifest


def check_prepared(cfg: DataConfig, recipe: str | None = None) -> dict:
    """Return the manifest of ``cfg.dir`` if it was prepared from this data config and is not stale.

    Cheap enough for every training start: source and output files are re-hashed only if their size or
    mtime changed since the manifest recorded them.

    Args:
        recipe: the recipe path or name, for the command in error messages (default ``<recipe>``).

    Raises:
        DataPrepError: not prepared; prepared from a different config (naming the differing fields); a
            configured language is missing; or stale (saying what changed and the command that rebuilds it).
        ConfigError: ``data.split.key`` cannot apply to a language's source.
    """
    command = PREPARE_COMMAND.replace("<recipe>", recipe) if recipe else PREPARE_COMMAND
    man = read_manifest(cfg.dir) if os.path.isdir(cfg.dir) else None
    if man is None:
        raise DataPrepError(f"{cfg.dir} is not a prepared data directory; run `{command}` first")
    diff = config_diff(man.get("data_config"), cfg)
    if diff:
        raise DataPrepError(f"{cfg.dir} was prepared from a different data config (differs in: {diff}); "
                            f"re-run `{command} --overwrite` or point data.dir elsewhere")
    missing = [l for l in cfg.languages if l not in man.get("languages", {})]
    if missing:
        raise DataPrepError(f"{cfg.dir} has no data for languages {missing}")
    stale = find_stale(man, cfg.dir, identities(sources_for(cfg), man))
    if stale:
        raise DataPrepError(f"{cfg.dir} is out of date ({'; '.join(map(str, stale))}); run `{command}` to "
                            f"rebuild it")
    return man


__all__ = ["CorpusError", "DataPrepError", "check_prepared", "data_fingerprint", "identities", "prepare_data",
           "read_manifest", "sources_for"]
