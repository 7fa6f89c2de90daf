"""data.split.key: aligned parallel text (line numbers, record fields) splits identically in every language,
and the stats report how many held-out keys of one language are in another language's train split."""
import json
import os
import random

import pytest

from conftest import recipe, synthetic_lines, write_recipe
from negint_ds.config import ConfigError, load_experiment
from negint_ds.data.prepare import prepare_data
from negint_ds.data.sources import CorpusError, Document, HFDatasetSource, TextFileSource
from negint_ds.data.stats import OVERLAP_COLUMN, heldout_overlap

LANGS = {"en": ["ka", "to", "ri", "ne", "so"], "fr": ["le", "zu", "pa", "mo", "ve"], "de": ["sch", "ei", "ur", "ag"]}
N = 400


def aligned_lines(i, lang):
    """Line k (1-based) of every language is the translation of line k: it carries k as '<lang> <k>'."""
    words = synthetic_lines(i, LANGS[lang], N)
    return [f"{lang} {k} {w}" for k, w in enumerate(words, 1)]


@pytest.fixture(scope="module")
def aligned_corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("aligned")
    for i, lang in enumerate(LANGS):
        lines = aligned_lines(i, lang)
        if lang == "fr":
            lines[6] = ""  # no translation of line 7: fr line 8 must still align with line 8 elsewhere
        if lang == "de":
            lines[20] = lines[19]  # a duplicate, dropped in de only
        (d / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d


def prepare_aligned(corpus, tmp_path, key):
    r = recipe(str(corpus), str(tmp_path / f"data_{key}"))
    r["data"]["languages"] = {l: {"source": "text", "path": str(corpus / f"{l}.txt")} for l in LANGS}
    r["data"]["split"].update(key=key, valid_fraction=0.1, test_fraction=0.1)
    man = prepare_data(load_experiment(write_recipe(str(tmp_path / f"{key}.yaml"), r)).data, progress=False)
    splits = {}
    for l in LANGS:
        for s in ("train", "valid", "test"):
            text = (tmp_path / f"data_{key}" / "text" / f"{l}.{s}.txt").read_text(encoding="utf-8").splitlines()
            splits[l, s] = {int(t.split()[1]) for t in text}
    return man, splits


def leaks(splits):
    """(held-out language, train language, line) for every held-out line whose translation is in another train."""
    return [(a, b, k) for a in LANGS for b in LANGS if a != b for s in ("valid", "test")
            for k in splits[a, s] & splits[b, "train"]]


def test_line_key_keeps_translations_out_of_other_languages_train(aligned_corpus, tmp_path):
    man, splits = prepare_aligned(aligned_corpus, tmp_path, "line")
    assert leaks(splits) == []
    assert all(splits["en", s] - {7} == splits["fr", s] for s in ("train", "valid", "test"))
    for l in LANGS:
        assert man["languages"][l]["heldout_overlap"]["in_other_train"] == 0
        assert man["languages"][l]["split_key"] == "line"
    md = (tmp_path / "data_line" / "stats.md").read_text(encoding="utf-8")
    assert OVERLAP_COLUMN in md and "| 0 of " in md
    assert OVERLAP_COLUMN in (tmp_path / "data_line" / "stats.csv").read_text(encoding="utf-8")


def test_text_key_is_the_reported_leak(aligned_corpus, tmp_path):
    """The bug report: keyed by text, most held-out lines have their translation in another language's train."""
    man, splits = prepare_aligned(aligned_corpus, tmp_path, "text")
    assert len(leaks(splits)) > N // 10
    assert "heldout_overlap" not in man["languages"]["en"], "text keys are not comparable across languages"


def test_line_keys_count_source_lines_before_cleaning(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\none\r\nthree\n", encoding="utf-8")
    docs = list(TextFileSource(str(tmp_path / "a.txt"), key="line").documents())
    assert [(d.text, d.key) for d in docs] == [("one", "line:1"), ("", "line:2"), ("two", "line:3"),
                                               ("one", "line:4"), ("three", "line:5")]


def test_field_key_aligns_jsonl_records_in_any_order(tmp_path):
    paths = {}
    for i, lang in enumerate(("en", "fr")):
        rows = [{"vid": f"GEN.{k}", "text": t} for k, t in enumerate(aligned_lines(i, lang), 1)]
        random.Random(i).shuffle(rows)  # field keys do not depend on record order
        paths[lang] = tmp_path / f"{lang}.jsonl"
        paths[lang].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    r = recipe(".", str(tmp_path / "data"))
    r["data"]["languages"] = {l: {"source": "hf", "dataset": "json", "data_files": [str(p)]} for l, p in paths.items()}
    r["data"]["split"].update(key="vid", valid_fraction=0.1, test_fraction=0.1)
    man = prepare_data(load_experiment(write_recipe(str(tmp_path / "r.yaml"), r)).data, progress=False)
    sp = {(l, s): {int(t.split()[1]) for t in (tmp_path / "data" / "text" / f"{l}.{s}.txt").read_text().splitlines()}
          for l in ("en", "fr") for s in ("train", "valid", "test")}
    for s in ("train", "valid", "test"):
        assert sp["en", s] == sp["fr", s]
    assert man["languages"]["fr"]["heldout_overlap"] == {"heldout_keys": len(sp["fr", "valid"] | sp["fr", "test"]),
                                                         "in_other_train": 0}


def test_hf_line_key_is_the_row_number(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["x", "", "y"]))
    docs = list(HFDatasetSource("json", data_files=[str(tmp_path / "a.jsonl")], key="line").documents())
    assert [d.key for d in docs] == ["line:1", "line:2", "line:3"]


def test_missing_key_field_names_file_and_record(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "a", "vid": 1}\n{"text": "b"}\n{"text": "c", "vid": 3}\n')
    with pytest.raises(CorpusError, match=r"a\.jsonl: record 2 has no value for field 'vid' \(data.split.key\)"):
        list(HFDatasetSource("json", data_files=[str(tmp_path / "a.jsonl")], key="vid").documents())
    with pytest.raises(CorpusError, match=r"no column 'verse'.*data.split.key"):
        list(HFDatasetSource("json", data_files=[str(tmp_path / "a.jsonl")], key="verse").documents())


def test_field_key_with_a_text_source_is_a_config_error(corpus_dir, tmp_path):
    r = recipe(corpus_dir, str(tmp_path / "data"))
    r["data"]["split"]["key"] = "vid"
    cfg = load_experiment(write_recipe(str(tmp_path / "r.yaml"), r)).data
    with pytest.raises(ConfigError, match=r"data\.split\.key: 'vid' names a record field, but languages\.en reads"):
        prepare_data(cfg, progress=False)
    assert not os.path.exists(tmp_path / "data")


def test_overlap_counts_held_out_keys_in_other_train():
    def sp(train, valid, test=()):
        return {"train": [Document("t", k) for k in train], "valid": [Document("v", k) for k in valid],
                "test": [Document("x", k) for k in test]}

    splits = {"en": sp(["a", "b"], ["c"], ["d"]), "fr": sp(["a", "c"], ["b"]), "sw": sp(["z"], ["d"])}
    assert heldout_overlap(splits, ["en", "fr", "sw"]) == {
        "en": {"heldout_keys": 2, "in_other_train": 1}, "fr": {"heldout_keys": 1, "in_other_train": 1},
        "sw": {"heldout_keys": 1, "in_other_train": 0}}
    assert heldout_overlap(splits, ["en"]) == {}
