"""Deterministic train/valid/test split by hashing unit keys, and deterministic subsampling.

A unit's split depends only on (salt, key): not on order, file, language or other units, so the
split is reproducible anywhere, and verse-aligned corpora split the same way in every language.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

from .sources.base import Document

SPLITS = ("train", "valid", "test")


def _unit_interval(salt: str, key: str) -> float:
    """Map (salt, key) to a uniform number in [0, 1) via SHA-256."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(key: str, valid_fraction: float, test_fraction: float, salt: str) -> str:
    """``'valid'`` if u < valid_fraction, ``'test'`` if u < valid+test, else ``'train'`` (u = hash of key)."""
    u = _unit_interval(salt, key)
    if u < valid_fraction:
        return "valid"
    if u < valid_fraction + test_fraction:
        return "test"
    return "train"


def split_documents(docs: Sequence[Document], valid_fraction: float, test_fraction: float,
                    salt: str) -> dict[str, list[Document]]:
    """Partition documents (each must have a ``key``) into the three splits, keeping their order.

    Raises:
        ValueError: a document has no key (clean first: :class:`~negint_ds.data.clean.Cleaner` sets one).
    """
    out: dict[str, list[Document]] = {s: [] for s in SPLITS}
    for d in docs:
        if d.key is None:
            raise ValueError("document without a split key; run the Cleaner first")
        out[split_of(d.key, valid_fraction, test_fraction, salt)].append(d)
    return out


def subsample(docs: Sequence[Document], n: int, salt: str) -> list[Document]:
    """Keep ``n`` documents chosen by hash rank (the paper's low-resource fr_l / ru_l), in original order.

    Nested: the sample of size n is a subset of the sample of any size m > n with the same salt.
    """
    if n >= len(docs):
        return list(docs)
    ranked = sorted(range(len(docs)), key=lambda i: _unit_interval(salt + "\x00subsample", docs[i].key))
    keep = sorted(ranked[:n])
    return [docs[i] for i in keep]
