"""Data preparation: sources → cleaning → split → subsample → shared vocabulary → binarised streams.

Writes ``data.dir``::

    manifest.json            what was built from what (data-config fingerprint, files, counts, checksums)
    spm.model / spm.vocab    the shared SentencePiece vocabulary
    <id>.<split>.bin         token streams (see :mod:`negint_ds.data.binarized`)
    text/<id>.<split>.txt    the cleaned text of each split (for inspection and downstream work)
    stats.md / stats.csv     Table 1

The directory is built beside its destination and renamed into place only when complete, so a crash
never leaves a half-prepared directory that training would accept, and an existing one is replaced
only with ``overwrite=True``.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import shutil

from tqdm.auto import tqdm

from .. import __version__
from ..atomic import atomic_write_json, atomic_write_text
from ..config import DataConfig, to_mapping
from ..languages import language_name
from .binarized import write_binarized
from .clean import Cleaner
from .sources import CorpusError, source_for
from .split import SPLITS, split_documents, subsample
from .stats import csv_table, markdown_table
from .vocab import EOS_ID, N_SPECIAL, UNK_ID, train_vocabulary

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


class DataPrepError(RuntimeError):
    """Preparation cannot proceed: existing directory, empty corpus, too little text."""


def data_fingerprint(cfg: DataConfig) -> str:
    """SHA-256 of the data config minus where things are stored (``dir``, ``cache_dir``)."""
    d = to_mapping(cfg)
    d.pop("dir", None)
    d.pop("cache_dir", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def read_manifest(data_dir: str) -> dict | None:
    """The manifest of a prepared directory, or None if there is none."""
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def prepare_data(cfg: DataConfig, overwrite: bool = False, progress: bool = True) -> dict:
    """Build ``cfg.dir`` unless an identical preparation is already there; return its manifest.

    Raises:
        DataPrepError: ``cfg.dir`` holds something else and ``overwrite`` is False; a corpus is empty
            after cleaning; a split is empty.
        CorpusError: a source cannot be read (missing file, failed download or checksum).
        VocabularyError: SentencePiece training failed.
    """
    fp = data_fingerprint(cfg)
    existing = read_manifest(cfg.dir) if os.path.isdir(cfg.dir) else None
    if existing is not None and existing.get("fingerprint") == fp and not overwrite:
        log.info("data in %s is up to date (fingerprint %s); nothing to do", cfg.dir, fp[:12])
        return existing
    if os.path.exists(cfg.dir) and (not os.path.isdir(cfg.dir) or os.listdir(cfg.dir)):
        if existing is None:  # never delete what we did not make, --overwrite or not
            raise DataPrepError(f"{cfg.dir} exists and is not a negint_ds data directory (no manifest.json); "
                                f"refusing to touch it. Choose another data.dir (--set data.dir=...)")
        if not overwrite:
            raise DataPrepError(f"{cfg.dir} was prepared from a different data config; refusing to overwrite it. "
                                f"Choose another data.dir (--set data.dir=...) or pass --overwrite to replace it")

    parent = os.path.dirname(os.path.abspath(cfg.dir))
    os.makedirs(parent, exist_ok=True)
    work = os.path.join(parent, f".{os.path.basename(os.path.abspath(cfg.dir))}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "text"))
    try:
        manifest = _build(cfg, fp, work, progress)
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


def _build(cfg: DataConfig, fp: str, work: str, progress: bool) -> dict:
    splits_by_lang: dict[str, dict[str, list]] = {}
    lang_info: dict[str, dict] = {}
    for lang_id, lc in cfg.languages.items():
        src = source_for(lang_id, cfg)
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
        lang_info[lang_id] = {"lang": code, "name": language_name(code), "source": src.describe(),
                              "cleaning": cleaner.stats.as_dict()}
        for name in SPLITS:
            atomic_write_text(os.path.join(work, "text", f"{lang_id}.{name}.txt"),
                              "".join(d.text + "\n" for d in sp[name]))
        log.info("%s: %s — kept %d of %d lines; train/valid/test = %d/%d/%d", lang_id, src.describe(),
                 cleaner.stats.kept, cleaner.stats.read, *(len(sp[s]) for s in SPLITS))

    v = cfg.vocab
    log.info("training a %d-piece SentencePiece %s vocabulary on a T=%.2f mix", v.size, v.model_type, v.temperature)
    vocab = train_vocabulary({l: [d.text for d in s["train"]] for l, s in splits_by_lang.items()},
                             os.path.join(work, "spm"), v.size, v.model_type, v.temperature, v.sample_sentences,
                             v.character_coverage, v.seed)

    for lang_id, sp in splits_by_lang.items():
        lang_info[lang_id]["splits"] = {}
        for name in tqdm(SPLITS, desc=f"binarise {lang_id}", disable=not progress, leave=False):
            ids = vocab.encode([d.text for d in sp[name]])
            fname = f"{lang_id}.{name}.bin"
            h = write_binarized(os.path.join(work, fname), ids, EOS_ID, vocab.size, vocab.sha256, lang_id, name)
            unk = sum(t == UNK_ID for s in ids for t in s)
            lang_info[lang_id]["splits"][name] = {
                "file": fname, "sentences": h["num_sentences"], "tokens": h["num_tokens"] - h["num_sentences"],
                "unk_tokens": int(unk), "sha256": h["sha256"]}

    manifest = {
        "format": "negint_ds.data", "format_version": 1, "fingerprint": fp,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "negint_ds_version": __version__, "data_config": to_mapping(cfg),
        "vocab": {"file": "spm.model", "sha256": vocab.sha256, "size": vocab.size, "mask_id": vocab.mask_id,
                  "n_special": N_SPECIAL},
        "languages": lang_info,
    }
    atomic_write_text(os.path.join(work, "stats.md"), markdown_table(manifest))
    atomic_write_text(os.path.join(work, "stats.csv"), csv_table(manifest))
    atomic_write_json(os.path.join(work, MANIFEST), manifest)  # written last: marks the directory complete
    return manifest


def check_prepared(cfg: DataConfig) -> dict:
    """Return the manifest of ``cfg.dir`` if it was prepared from exactly this data config.

    Raises:
        DataPrepError: not prepared, or prepared from a different config (naming the differing fields),
            or a configured language is missing.
    """
    man = read_manifest(cfg.dir) if os.path.isdir(cfg.dir) else None
    if man is None:
        raise DataPrepError(f"{cfg.dir} is not a prepared data directory; run "
                            f"`python -m negint_ds.prepare --config <recipe>` first")
    if man.get("fingerprint") != data_fingerprint(cfg):
        old, new = man.get("data_config", {}), to_mapping(cfg)
        diff = sorted(k for k in set(old) | set(new) if k not in ("dir", "cache_dir") and old.get(k) != new.get(k))
        raise DataPrepError(f"{cfg.dir} was prepared from a different data config (differs in: {diff}); "
                            f"re-run prepare with --overwrite or point data.dir elsewhere")
    missing = [l for l in cfg.languages if l not in man["languages"]]
    if missing:
        raise DataPrepError(f"{cfg.dir} has no data for languages {missing}")
    return man


__all__ = ["CorpusError", "DataPrepError", "check_prepared", "data_fingerprint", "prepare_data", "read_manifest"]
