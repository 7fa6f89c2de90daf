"""Token files: round trip, and refusal of corrupt, truncated, foreign or mismatched files."""
import os

import numpy as np
import pytest

from negint_ds.data.binarized import BinarizedError, open_binarized, read_header, write_binarized

SENTS = [[5, 6, 7], [8], [9, 10, 11, 12], []]


def write(tmp_path, vocab_size=100, sha="a" * 64):
    p = str(tmp_path / "x.bin")
    write_binarized(p, SENTS, eos_id=3, vocab_size=vocab_size, vocab_sha256=sha, lang="sw", split="train")
    return p


def test_round_trip(tmp_path):
    p = write(tmp_path)
    s = open_binarized(p, vocab_sha256="a" * 64, vocab_size=100)
    assert s.tokens.dtype == np.uint16
    assert list(s.tokens) == [5, 6, 7, 3, 8, 3, 9, 10, 11, 12, 3, 3]
    assert [list(s.sentence(i)) for i in range(4)] == SENTS
    assert s.header["num_sentences"] == 4 and s.header["lang"] == "sw" and s.header["split"] == "train"
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f], "temporary file left behind"


def test_large_vocab_uses_int32(tmp_path):
    p = str(tmp_path / "big.bin")
    write_binarized(p, [[70000, 5]], 3, 80000, "b" * 64, "en", "valid")
    s = open_binarized(p)
    assert s.tokens.dtype == np.int32 and list(s.tokens) == [70000, 5, 3]


def test_corruption_is_detected(tmp_path):
    p = write(tmp_path)
    _, start = read_header(p)
    with open(p, "r+b") as f:
        f.seek(start + 2)
        b = f.read(1)
        f.seek(start + 2)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(BinarizedError, match="checksum mismatch"):
        open_binarized(p)


def test_truncation_and_foreign_files_are_refused(tmp_path):
    p = write(tmp_path)
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) - 8)
    with pytest.raises(BinarizedError, match="truncated"):
        open_binarized(p)
    q = tmp_path / "foreign.bin"
    q.write_bytes(b"PK\x03\x04 not ours")
    with pytest.raises(BinarizedError, match="bad magic"):
        open_binarized(str(q))
    with pytest.raises(BinarizedError, match="not found"):
        open_binarized(str(tmp_path / "missing.bin"))


def test_vocabulary_mismatch_is_refused(tmp_path):
    p = write(tmp_path)
    with pytest.raises(BinarizedError, match="do not match"):
        open_binarized(p, vocab_sha256="c" * 64)
    with pytest.raises(BinarizedError, match="vocabulary size 100, expected 200"):
        open_binarized(p, vocab_size=200)


def test_out_of_range_ids_are_refused(tmp_path):
    with pytest.raises(BinarizedError, match="outside"):
        write_binarized(str(tmp_path / "y.bin"), [[5, 150]], 3, 100, "a" * 64, "sw", "train")
