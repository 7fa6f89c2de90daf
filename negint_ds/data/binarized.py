"""Binarised token streams: one memory-mapped file per (language, split) with a header and checksum.

Layout (little-endian)::

    b"NEGINTDS"                 8 bytes magic
    uint32 header_len           length of the JSON header that follows
    header (UTF-8 JSON)         format, dtype, counts, vocabulary SHA-256/size, language, split, checksum
    zero padding                up to DATA_ALIGN
    tokens[num_tokens]          dtype uint16 (vocab <= 65536) or int32; sentences separated by </s>
    offsets[num_sentences + 1]  int64, start of each sentence in ``tokens`` (last = num_tokens)

The checksum (SHA-256 over tokens then offsets) and the vocabulary SHA-256 let a reader refuse a
corrupt, truncated or mismatched file with a message that says what is wrong and how to fix it.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MAGIC = b"NEGINTDS"
FORMAT_VERSION = 1
DATA_ALIGN = 4096


class BinarizedError(ValueError):
    """A token file is corrupt, truncated, of another format, or built with another vocabulary."""


def _digest(tokens: np.ndarray, offsets: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(memoryview(np.ascontiguousarray(tokens)).cast("B"))
    h.update(memoryview(np.ascontiguousarray(offsets)).cast("B"))
    return h.hexdigest()


def write_binarized(path: str, sentences: Sequence[Sequence[int]], eos_id: int, vocab_size: int,
                    vocab_sha256: str, lang: str, split: str) -> dict:
    """Write sentences (token id lists) as one </s>-separated stream, atomically (temp file + rename).

    Returns:
        The header dict that was written.

    Raises:
        BinarizedError: a token id is outside [0, vocab_size).
    """
    dtype = np.uint16 if vocab_size <= 1 << 16 else np.int32
    lengths = np.fromiter((len(s) + 1 for s in sentences), dtype=np.int64, count=len(sentences))
    offsets = np.zeros(len(sentences) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.full(int(offsets[-1]), eos_id, dtype=np.int64)
    for s, start in zip(sentences, offsets[:-1]):
        flat[start:start + len(s)] = s
    if flat.size and (flat.min() < 0 or flat.max() >= vocab_size):
        raise BinarizedError(f"{path}: token ids outside [0, {vocab_size}) (vocabulary mismatch?)")
    tokens = flat.astype(dtype)
    header = {
        "format": "negint_ds.binarized", "format_version": FORMAT_VERSION, "dtype": np.dtype(dtype).name,
        "num_tokens": int(tokens.size), "num_sentences": len(sentences), "vocab_size": int(vocab_size),
        "vocab_sha256": vocab_sha256, "lang": lang, "split": split, "sha256": _digest(tokens, offsets),
    }
    hbytes = json.dumps(header, sort_keys=True).encode("utf-8")
    prefix = MAGIC + struct.pack("<I", len(hbytes)) + hbytes
    pad = (-len(prefix)) % DATA_ALIGN
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(prefix + b"\0" * pad)
            f.write(tokens.tobytes())
            f.write(offsets.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return header


@dataclass
class TokenStream:
    """A memory-mapped binarised file.

    Attributes:
        tokens: np.memmap of shape (num_tokens,), dtype uint16 or int32 (read-only).
        offsets: np.memmap int64 of shape (num_sentences + 1,).
        header: the JSON header.
    """

    path: str
    header: dict
    tokens: np.ndarray
    offsets: np.ndarray

    @property
    def num_tokens(self) -> int:
        return int(self.header["num_tokens"])

    def sentence(self, i: int) -> np.ndarray:
        """Token ids of sentence ``i`` without its </s>."""
        return np.asarray(self.tokens[self.offsets[i]:self.offsets[i + 1] - 1])


def read_header(path: str) -> tuple[dict, int]:
    """Parse the header; returns (header, data offset in bytes).

    Raises:
        BinarizedError: missing file, wrong magic, unreadable header, or unsupported version.
    """
    if not os.path.isfile(path):
        raise BinarizedError(f"token file not found: {path} (run `python -m negint_ds.prepare`)")
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:8] != MAGIC:
            raise BinarizedError(f"{path}: not a negint_ds token file (bad magic bytes)")
        (hlen,) = struct.unpack("<I", head[8:12])
        raw = f.read(hlen)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BinarizedError(f"{path}: corrupt header ({e}); re-run `python -m negint_ds.prepare --overwrite`") from e
    if header.get("format_version") != FORMAT_VERSION:
        raise BinarizedError(f"{path}: format version {header.get('format_version')} not supported "
                             f"(expected {FORMAT_VERSION})")
    return header, 12 + hlen + ((-(12 + hlen)) % DATA_ALIGN)


def open_binarized(path: str, vocab_sha256: str | None = None, vocab_size: int | None = None,
                   verify: bool = True) -> TokenStream:
    """Memory-map a token file, checking size, checksum and (optionally) the vocabulary it was built with.

    Args:
        vocab_sha256 / vocab_size: expected vocabulary; a mismatch is refused.
        verify: recompute the SHA-256 of the data (one read of the file).

    Raises:
        BinarizedError: missing/corrupt/truncated file, checksum mismatch, or vocabulary mismatch.
    """
    header, start = read_header(path)
    dtype = np.dtype(header["dtype"])
    n_tok, n_sent = int(header["num_tokens"]), int(header["num_sentences"])
    expected = start + n_tok * dtype.itemsize + (n_sent + 1) * 8
    actual = os.path.getsize(path)
    if actual != expected:
        raise BinarizedError(f"{path}: file has {actual} bytes, header implies {expected} (truncated or appended "
                             f"to); re-run `python -m negint_ds.prepare --overwrite`")
    if vocab_sha256 is not None and header["vocab_sha256"] != vocab_sha256:
        raise BinarizedError(f"{path}: built with vocabulary {header['vocab_sha256'][:12]}…, but the vocabulary in use "
                             f"is {vocab_sha256[:12]}…; the data and the vocabulary (or checkpoint) do not match")
    if vocab_size is not None and int(header["vocab_size"]) != int(vocab_size):
        raise BinarizedError(f"{path}: built for vocabulary size {header['vocab_size']}, expected {vocab_size}")
    tokens = np.memmap(path, dtype=dtype, mode="r", offset=start, shape=(n_tok,))
    offsets = np.memmap(path, dtype=np.int64, mode="r", offset=start + n_tok * dtype.itemsize, shape=(n_sent + 1,))
    if verify and _digest(tokens, offsets) != header["sha256"]:
        raise BinarizedError(f"{path}: checksum mismatch (the data is corrupt); re-run "
                             f"`python -m negint_ds.prepare --overwrite`")
    return TokenStream(path, header, tokens, offsets)
