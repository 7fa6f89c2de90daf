"""Checkpoint manifests: which files a complete checkpoint holds, so a damaged one is never resumed from.

Every ``checkpoints/<tag>/`` gets ``negint_ds_checkpoint.json`` written *last* (after every rank's
DeepSpeed files and the φ optimiser state are on disk, before ``latest.json`` names the checkpoint)::

    {"format": 1, "tag": "step_00000120", "step": 120, "files": {"mp_rank_00_model_states.pt":
     {"size": 123, "sha256": "…"}, …}, "vocab_sha256": "…", "data_fingerprint": "…", "lang_ids": [...]}

A checkpoint *verifies* when the manifest parses and every listed file exists with its size and
SHA-256. A directory without a manifest is an interrupted save (or a checkpoint from before manifests
existed, accepted only when ``latest.json`` names it). Checkpoints live on a file system every rank
sees (as DeepSpeed itself assumes without ``use_node_local_storage``): rank 0 lists and hashes all ranks'
files.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..atomic import atomic_write_json
from ..data.sources.base import sha256_file as sha256_of

MANIFEST = "negint_ds_checkpoint.json"
FORMAT = 1


def _files(ckpt_dir: str) -> list[str]:
    out = []
    for root, _, names in os.walk(ckpt_dir):
        for n in names:
            rel = os.path.relpath(os.path.join(root, n), ckpt_dir)
            if n != MANIFEST and not n.endswith(".tmp"):
                out.append(rel)
    return sorted(out)


def write_manifest(ckpt_dir: str, tag: str, step: int, identity: dict) -> dict:
    """Hash every file of ``ckpt_dir`` and write its manifest atomically (the checkpoint's last file).

    Args:
        ckpt_dir: ``checkpoints/<tag>``, complete on disk.
        tag, step: the checkpoint's tag and optimiser step.
        identity: what the checkpoint must match on resume (``vocab_sha256``, ``data_fingerprint``,
            ``lang_ids``).

    Returns:
        The manifest written.
    """
    files = {rel: {"size": os.path.getsize(os.path.join(ckpt_dir, rel)), "sha256": sha256_of(os.path.join(ckpt_dir, rel))}
             for rel in _files(ckpt_dir)}
    man = {"format": FORMAT, "tag": tag, "step": int(step), "files": files, **identity}
    atomic_write_json(os.path.join(ckpt_dir, MANIFEST), man)
    return man


def read_manifest(ckpt_dir: str) -> dict | None:
    """The parsed manifest of ``ckpt_dir``, or None if it has none.

    Raises:
        ValueError: the manifest exists but is not a valid manifest (truncated, edited).
    """
    path = os.path.join(ckpt_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            man = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is unreadable ({e})") from None
    if not isinstance(man, dict) or man.get("format") != FORMAT or not isinstance(man.get("files"), dict):
        raise ValueError(f"{path} is not a format-{FORMAT} checkpoint manifest")
    return man


@dataclass
class Verdict:
    """Whether one checkpoint can be resumed from; ``reason`` says why not."""

    tag: str
    ok: bool
    step: int | None = None
    reason: str = ""
    manifest: dict | None = None


def verify(ckpt_dir: str) -> Verdict:
    """Check ``ckpt_dir`` against its manifest: presence, size, then SHA-256 of every file."""
    tag = os.path.basename(ckpt_dir.rstrip(os.sep))
    try:
        man = read_manifest(ckpt_dir)
    except ValueError as e:
        return Verdict(tag, False, reason=str(e))
    if man is None:
        return Verdict(tag, False, reason="no manifest (the save was interrupted)")
    for rel, want in man["files"].items():
        path = os.path.join(ckpt_dir, rel)
        if not os.path.isfile(path):
            return Verdict(tag, False, man["step"], f"{rel} is missing", man)
        if os.path.getsize(path) != want["size"]:
            return Verdict(tag, False, man["step"], f"{rel} has {os.path.getsize(path)} bytes, the manifest says "
                                                    f"{want['size']} (truncated or replaced)", man)
    for rel, want in man["files"].items():  # sizes first: a truncated file is found without hashing
        if sha256_of(os.path.join(ckpt_dir, rel)) != want["sha256"]:
            return Verdict(tag, False, man["step"], f"{rel} does not match its SHA-256 (corrupted)", man)
    return Verdict(tag, True, man["step"], manifest=man)


__all__ = ["MANIFEST", "Verdict", "read_manifest", "sha256_of", "verify", "write_manifest"]
