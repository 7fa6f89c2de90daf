"""Cleaning and the deterministic split: no unit and no identical text in two splits; aligned corpora align."""
import unicodedata

import pytest

from negint_ds.data.clean import Cleaner, clean_text
from negint_ds.data.sources.base import Document
from negint_ds.data.split import SPLITS, split_documents, split_of, subsample


def test_clean_text_normalises_and_folds_whitespace():
    decomposed = "Cafe\u0301  au\tlait\n\u00a0ok"
    out = clean_text(decomposed)
    assert out == "Café au lait ok"
    assert unicodedata.is_normalized("NFC", out)
    assert clean_text("ﬁ", "NFKC") == "fi" and clean_text("ﬁ", "NFC") == "ﬁ"


def test_cleaner_counts_what_it_drops():
    docs = [Document(t) for t in ["a b", "", "   ", "x", "a  b", "y" * 50, "ok line"]]
    c = Cleaner(min_chars=2, max_chars=20)
    out = c(docs)
    assert [d.text for d in out] == ["a b", "ok line"]
    s = c.stats
    assert (s.read, s.kept, s.empty, s.too_short, s.too_long, s.duplicate) == (7, 2, 2, 1, 1, 1)
    assert out[0].key == "text:a b", "text documents are keyed by their cleaned text"


def make_docs(n):
    return Cleaner()([Document(f"sentence number {i}", key=None) for i in range(n)])


def test_split_is_disjoint_complete_and_deterministic():
    docs = make_docs(5000)
    sp = split_documents(docs, 0.1, 0.05, "salt")
    keys = {s: {d.key for d in sp[s]} for s in SPLITS}
    texts = {s: {d.text for d in sp[s]} for s in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not keys[a] & keys[b] and not texts[a] & texts[b]
    assert sum(len(v) for v in sp.values()) == 5000
    assert abs(len(sp["valid"]) / 5000 - 0.1) < 0.02 and abs(len(sp["test"]) / 5000 - 0.05) < 0.015
    again = split_documents(list(reversed(docs)), 0.1, 0.05, "salt")
    assert {d.key for d in again["valid"]} == keys["valid"], "split must not depend on order"
    other = split_documents(docs, 0.1, 0.05, "other salt")
    assert {d.key for d in other["valid"]} != keys["valid"]


def test_verse_aligned_corpora_split_identically_across_languages():
    en = [Document(f"english verse {i}", key=f"bible:1:1:{i}") for i in range(2000)]
    sw = [Document(f"mstari {i}", key=f"bible:1:1:{i}") for i in range(2000)]
    a, b = split_documents(en, 0.1, 0.1, "s"), split_documents(sw, 0.1, 0.1, "s")
    for s in SPLITS:
        assert [d.key for d in a[s]] == [d.key for d in b[s]]


def test_duplicates_cannot_leak_across_splits():
    docs = [Document("same text", key=None), Document("same text", key=None), Document("other", key=None)]
    clean = Cleaner()(docs)
    assert [d.text for d in clean] == ["same text", "other"]
    assert split_of("text:same text", 0.5, 0.0, "s") in SPLITS


def test_subsample_is_deterministic_nested_and_order_preserving():
    docs = make_docs(1000)
    s100, s300 = subsample(docs, 100, "s"), subsample(docs, 300, "s")
    assert len(s100) == 100 and len(s300) == 300
    assert {d.key for d in s100} <= {d.key for d in s300}
    idx = [docs.index(d) for d in s100]
    assert idx == sorted(idx)
    assert subsample(docs, 100, "s") == s100
    assert subsample(docs, 5000, "s") == docs


def test_split_requires_keys():
    with pytest.raises(ValueError, match="split key"):
        split_documents([Document("x")], 0.1, 0.1, "s")
