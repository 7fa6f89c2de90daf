"""Run-directory rules, checkpoint bookkeeping, the checkpoint/vocabulary check and XLM's LR schedule."""
import math
import os
import types

import pytest

from negint_ds.config import ConfigError
from negint_ds.data.binarized import BinarizedError
from negint_ds.train.lr_schedule import InverseSqrtWithWarmup
from negint_ds.train.run_dir import RunDir, RunDirError
from negint_ds.train.setup import check_checkpoint_matches


def test_run_dir_rules(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    rd.check(resume=False, overwrite=False)  # fresh: fine
    with pytest.raises(RunDirError, match="holds no run"):
        rd.check(resume=True, overwrite=False)
    rd.create(overwrite=False, config_yaml="name: x\n", ds_config={"train_batch_size": 8})
    assert rd.is_run(), "a run directory holds its configs from the moment it exists"
    with pytest.raises(RunDirError, match="already exists"):
        rd.check(resume=False, overwrite=False)
    rd.check(resume=True, overwrite=False)
    rd.check(resume=False, overwrite=True)
    with pytest.raises(RunDirError, match="contradict"):
        rd.check(resume=True, overwrite=True)


def test_overwrite_never_deletes_what_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(RunDirError, match="does not look like a negint_ds run directory"):
        RunDir(str(tmp_path)).check(resume=False, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "precious"
    rd = RunDir(str(tmp_path / "run"))
    rd.create(overwrite=False, config_yaml="name: x\n", ds_config={})
    (tmp_path / "run" / "old.txt").write_text("old run")
    rd.create(overwrite=True, config_yaml="name: y\n", ds_config={})
    assert not (tmp_path / "run" / "old.txt").exists() and open(rd.config).read() == "name: y\n"


def test_commit_keeps_newest_and_prunes(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    rd.create(overwrite=False, config_yaml="name: x\n", ds_config={})
    for step in (10, 20, 30, 40):
        os.makedirs(os.path.join(rd.checkpoints, f"step_{step}"))
        rd.commit_checkpoint(f"step_{step}", step, keep=2)
    assert rd.latest()["tag"] == "step_40"
    assert sorted(d for d in os.listdir(rd.checkpoints) if d.startswith("step_")) == ["step_20", "step_30", "step_40"]
    # a half-written checkpoint (crash before commit) is never named by latest.json
    os.makedirs(os.path.join(rd.checkpoints, "step_50"))
    assert rd.latest()["step"] == 40


def test_checkpoint_from_another_vocabulary_is_refused():
    prep = types.SimpleNamespace(vocab=types.SimpleNamespace(sha256="a" * 64, path="spm.model"),
                                 manifest={"fingerprint": "f"}, cfg=types.SimpleNamespace(lang_ids=["en", "sw"]),
                                 paths=types.SimpleNamespace(config="config.yaml"))
    good = {"vocab_sha256": "a" * 64, "data_fingerprint": "f", "lang_ids": ["en", "sw"]}
    check_checkpoint_matches(good, prep)
    with pytest.raises(BinarizedError, match="do not match"):
        check_checkpoint_matches(dict(good, vocab_sha256="b" * 64), prep)
    with pytest.raises(BinarizedError, match="differently prepared data"):
        check_checkpoint_matches(dict(good, data_fingerprint="g"), prep)
    with pytest.raises(ConfigError, match="languages"):
        check_checkpoint_matches(dict(good, lang_ids=["sw", "en"]), prep)


def test_inverse_sqrt_schedule_matches_xlm():
    lr, init, warm = 1e-4, 1e-7, 4000
    f = InverseSqrtWithWarmup(warm, init / lr)
    assert lr * f(0) == pytest.approx(init)
    assert lr * f(2000) == pytest.approx(init + (lr - init) * 0.5)
    assert lr * f(4000) == pytest.approx(lr)
    assert lr * f(16000) == pytest.approx(lr * math.sqrt(4000 / 16000))
    assert InverseSqrtWithWarmup(0, 0.0)(123) == 1.0
