"""Data preparation: Table 1, shared vocabulary, idempotence, and refusals that never lose data."""
import json
import os

import numpy as np
import pytest

from conftest import recipe, write_recipe
from negint_ds.config import ConfigError, load_experiment
from negint_ds.data.binarized import open_binarized
from negint_ds.data.prepare import DataPrepError, check_prepared, prepare_data
from negint_ds.data.sources import CorpusError
from negint_ds.data.vocab import EOS_ID, N_SPECIAL, Vocabulary, sample_mix
from negint_ds.prepare import main as prepare_main


def test_prepared_directory_is_complete_and_consistent(tiny_data):
    d, man = tiny_data["data_dir"], tiny_data["manifest"]
    vocab = Vocabulary(os.path.join(d, "spm.model"))
    assert vocab.size == 300 and vocab.mask_id == N_SPECIAL - 1 and man["vocab"]["sha256"] == vocab.sha256
    for lang in ("en", "sw"):
        texts = {}
        for split in ("train", "valid", "test"):
            info = man["languages"][lang]["splits"][split]
            s = open_binarized(os.path.join(d, info["file"]), vocab.sha256, vocab.size)
            lines = open(os.path.join(d, "text", f"{lang}.{split}.txt"), encoding="utf-8").read().splitlines()
            assert s.header["num_sentences"] == len(lines) == info["sentences"]
            assert vocab.decode(list(s.sentence(0))) == lines[0], "binarised text must decode to the cleaned text"
            assert int(np.sum(np.asarray(s.tokens) == EOS_ID)) == len(lines)
            texts[split] = set(lines)
        assert not texts["train"] & texts["valid"] and not texts["train"] & texts["test"]
    files = {os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs} - {"manifest.json"}
    assert set(man["outputs"]) == files, "the manifest records every file it wrote, to detect a missing one"
    assert man["outputs"]["spm.model"]["sha256"] == vocab.sha256 and man["sources"]["en"]["kind"] == "text"
    table = open(os.path.join(d, "stats.md"), encoding="utf-8").read()
    assert "| en | English |" in table and "| sw | Swahili |" in table
    check_prepared(load_experiment(tiny_data["recipe"]).data)


def test_prepare_is_idempotent_and_refuses_a_different_config(tiny_data, capsys):
    before = os.path.getmtime(os.path.join(tiny_data["data_dir"], "manifest.json"))
    assert prepare_main(["--config", tiny_data["recipe"], "--no-progress"]) == 0
    assert os.path.getmtime(os.path.join(tiny_data["data_dir"], "manifest.json")) == before
    code = prepare_main(["--config", tiny_data["recipe"], "--no-progress", "--set", "data.vocab.size=250"])
    assert code == 2
    assert "prepared from a different data config; refusing to overwrite" in capsys.readouterr().err
    assert os.path.getmtime(os.path.join(tiny_data["data_dir"], "manifest.json")) == before
    with pytest.raises(DataPrepError, match=r"differs in: \['vocab'\]"):
        check_prepared(load_experiment(tiny_data["recipe"], ["data.vocab.size=250"]).data)


def test_overwrite_and_subsampling(corpus_dir, tmp_path):
    r = recipe(corpus_dir, str(tmp_path / "data"))
    r["data"]["languages"]["sw_l"] = {"source": "text", "lang": "sw", "path": os.path.join(corpus_dir, "sw.txt"),
                                      "max_train_sentences": 200}
    path = write_recipe(str(tmp_path / "r.yaml"), r)
    man = prepare_data(load_experiment(path).data, progress=False)
    assert man["languages"]["sw_l"]["splits"]["train"]["sentences"] == 200
    a, b = man["languages"]["sw_l"]["splits"]["valid"], man["languages"]["sw"]["splits"]["valid"]
    assert (a["sentences"], a["sha256"]) == (b["sentences"], b["sha256"]), "subsampling must leave valid untouched"
    (tmp_path / "data" / "user_note.txt").write_text("keep me")
    man2 = prepare_data(load_experiment(path, ["data.vocab.size=250"]).data, overwrite=True, progress=False)
    assert man2["vocab"]["size"] == 250 and not (tmp_path / "data" / "user_note.txt").exists()
    assert not [p for p in os.listdir(tmp_path) if ".partial" in p]


def test_refuses_foreign_directory(corpus_dir, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("mine")
    path = write_recipe(str(tmp_path / "r.yaml"), recipe(corpus_dir, str(tmp_path / "data")))
    for overwrite in (False, True):  # --overwrite never deletes what prepare did not make
        with pytest.raises(DataPrepError, match="not a negint_ds data directory"):
            prepare_data(load_experiment(path).data, overwrite=overwrite, progress=False)
    assert (tmp_path / "data" / "precious.txt").read_text() == "mine"


def test_missing_and_empty_corpora(corpus_dir, tmp_path):
    r = recipe(corpus_dir, str(tmp_path / "d1"))
    r["data"]["languages"]["sw"]["path"] = str(tmp_path / "nope.txt")
    with pytest.raises(CorpusError, match="corpus file not found: .*nope.txt"):
        prepare_data(load_experiment(write_recipe(str(tmp_path / "a.yaml"), r)).data, progress=False)
    (tmp_path / "empty.txt").write_text("\n  \n")
    r["data"]["languages"]["sw"]["path"] = str(tmp_path / "empty.txt")
    with pytest.raises(CorpusError, match="corpus file is empty"):
        prepare_data(load_experiment(write_recipe(str(tmp_path / "b.yaml"), r)).data, progress=False)
    assert not os.path.exists(tmp_path / "d1")


def test_unknown_language_code_stops_before_any_work(corpus_dir, tmp_path):
    r = recipe(corpus_dir, str(tmp_path / "d"))
    r["data"]["languages"]["qq"] = {"source": "text", "path": os.path.join(corpus_dir, "sw.txt")}
    with pytest.raises(ConfigError, match="unknown language code 'qq'"):
        load_experiment(write_recipe(str(tmp_path / "r.yaml"), r))


def test_hf_datasets_source_reads_local_json(corpus_dir, tmp_path):
    rows = [{"text": l, "id": i} for i, l in enumerate(open(os.path.join(corpus_dir, "sw.txt")).read().splitlines())]
    (tmp_path / "sw.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    from negint_ds.data.sources import HFDatasetSource

    docs = list(HFDatasetSource("json", data_files=[str(tmp_path / "sw.jsonl")], max_documents=50).documents())
    assert [d.text for d in docs] == [r["text"] for r in rows[:50]]
    with pytest.raises(CorpusError, match="no column 'body'"):
        list(HFDatasetSource("json", data_files=[str(tmp_path / "sw.jsonl")], text_field="body").documents())


def test_vocab_mix_follows_temperature():
    texts = {"big": ["x"] * 9000, "small": ["y"] * 1000}
    idx = sample_mix(texts, temperature=2.0, total=4000, seed=0)
    # q = (0.75, 0.25) at T = 2
    assert len(idx["big"]) == 3000 and len(idx["small"]) == 1000
    idx = sample_mix(texts, temperature=100.0, total=10000, seed=0)
    q_small = 0.1 ** 0.01 / (0.9 ** 0.01 + 0.1 ** 0.01)
    assert len(idx["small"]) == round(q_small * 10000) and idx["small"].max() < 1000, "small language up-sampled"
