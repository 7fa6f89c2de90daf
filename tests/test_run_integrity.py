"""Run-directory integrity: checkpoint manifests, resume from the newest verified checkpoint, refusals that
name the damaged file, and SIGKILL at random points of a save followed by an exact resume."""
import json
from concurrent.futures import ThreadPoolExecutor
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO, child_env, free_port, load_export, read_metrics, run_launcher, write_ds_config
from negint_ds.train.ckpt_manifest import MANIFEST, verify, write_manifest
from negint_ds.train.run_dir import RunDir, RunDirError
from negint_ds.train.setup import RunArgs, prepare_run

ADAPTERS = ["--set", "model.adapters.kind=language", "--set", "model.adapters.bottleneck=8"]  # φ state in checkpoints
KILLER = os.path.join(os.path.dirname(__file__), "kill_during_save.py")


def _fake_checkpoint(rd: RunDir, step: int, manifest: bool = True, commit: bool = True) -> str:
    tag = f"step_{step:08d}"
    d = os.path.join(rd.checkpoints, tag)
    os.makedirs(d)
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        with open(os.path.join(d, name), "wb") as f:
            f.write(os.urandom(1000))
    if manifest:
        write_manifest(d, tag, step, {"vocab_sha256": "v", "data_fingerprint": "f", "lang_ids": ["en"]})
    if commit:
        rd.commit_checkpoint(tag, step, keep=5)
    return d


@pytest.fixture
def rd(tmp_path):
    r = RunDir(str(tmp_path / "run"))
    r.create(False, "name: x\n", {})
    return r


def test_resume_takes_the_newest_checkpoint_that_verifies(rd):
    _fake_checkpoint(rd, 4)
    d8 = _fake_checkpoint(rd, 8)
    assert rd.resume_point().tag == "step_00000008"
    with open(os.path.join(d8, "mp_rank_00_model_states.pt"), "r+b") as f:
        f.truncate(10)
    p = rd.resume_point()
    assert (p.tag, p.step) == ("step_00000004", 4)
    assert p.skipped[0][0] == "step_00000008" and "has 10 bytes, the manifest says 1000" in p.skipped[0][1]
    assert p.quarantine == ["step_00000008"] and "skipped step_00000008" in p.describe()


def test_a_flipped_byte_is_found_by_the_hash(rd):
    d = _fake_checkpoint(rd, 4)
    path = os.path.join(d, "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    data = bytearray(open(path, "rb").read())
    data[500] ^= 1
    open(path, "wb").write(bytes(data))
    assert not verify(d).ok and "SHA-256 (corrupted)" in verify(d).reason
    with pytest.raises(RunDirError, match=r"no checkpoint .* verifies \(step_00000004: .*corrupted"):
        rd.resume_point()


def test_interrupted_save_is_quarantined_not_deleted(rd):
    _fake_checkpoint(rd, 4)
    _fake_checkpoint(rd, 8, manifest=False, commit=False)  # killed mid-save
    p = rd.resume_point()
    assert p.tag == "step_00000004" and p.quarantine == ["step_00000008"]
    assert "no manifest (the save was interrupted)" in p.skipped[0][1]
    assert rd.apply_resume_point(p, keep=2) == ["step_00000008"]
    assert rd.checkpoint_tags() == ["step_00000004"]
    assert os.path.isfile(os.path.join(rd.checkpoints, "quarantine", "step_00000008", "mp_rank_00_model_states.pt"))
    assert rd.latest()["tag"] == "step_00000004"


def test_complete_checkpoint_not_yet_named_in_latest_is_used(rd):
    _fake_checkpoint(rd, 4)
    _fake_checkpoint(rd, 8, commit=False)  # killed between its manifest and latest.json
    assert rd.resume_point().tag == "step_00000008"


def test_missing_or_damaged_latest_json_refuses_instead_of_restarting(rd):
    _fake_checkpoint(rd, 4)
    os.unlink(rd.latest_file)
    with pytest.raises(RunDirError, match=r"latest.json is missing .* refusing to restart from step 0.*"
                                          r"--resume_from <tag>.*\['step_00000004'\]"):
        rd.resume_point()
    assert rd.resume_point("step_00000004").step == 4
    with pytest.raises(RunDirError, match="no such checkpoint"):
        rd.resume_point("step_00000099")
    open(rd.latest_file, "w").write('{"tag": "step_0000')
    with pytest.raises(RunDirError, match=r"latest.json is damaged"):
        rd.resume_point()


def test_checkpoint_from_before_manifests_is_accepted_only_when_named(rd):
    _fake_checkpoint(rd, 4, manifest=False)  # named by latest.json, written by an older version
    assert rd.resume_point().tag == "step_00000004"
    manifest = os.path.join(rd.checkpoints, "step_00000004", MANIFEST)
    open(manifest, "w").write("{not json")
    p = rd.resume_point
    with pytest.raises(RunDirError, match="unreadable"):
        p()


def test_run_files_are_checked_on_resume(rd):
    with open(rd.metrics, "w") as f:
        f.write('{"kind": "train", "step": 1}\n{"kind": "tr\n{"kind": "train", "step": 3}\n')
    with pytest.raises(RunDirError, match=r"metrics.jsonl line 2 is damaged"):
        rd.check_run_files()
    with open(rd.metrics, "w") as f:  # a kill mid-append: the resume rewrites the file
        f.write('{"kind": "train", "step": 1}\n{"kind": "tr')
    rd.check_run_files()
    open(rd.meta, "w").write("[1, 2")
    with pytest.raises(RunDirError, match=r"run.json is damaged"):
        rd.check_run_files()


# ------------------------------------------------------------------ real runs


@pytest.fixture(scope="module")
def ds2(tmp_path_factory):
    return write_ds_config(str(tmp_path_factory.mktemp("ds") / "zero2.json"), stage=2)


def _common(tiny_data, ds, steps):
    return ["--deepspeed_config", ds, "--config", tiny_data["recipe"], "--set", f"train.max_steps={steps}",
            "--set", "train.save_every=4", "--set", "train.eval_every=4", "--set", "train.keep_checkpoints=1",
            *ADAPTERS]


@pytest.fixture(scope="module")
def finished(tiny_data, ds2, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("runs") / "done")
    p = run_launcher(_common(tiny_data, ds2, 8) + ["--run_dir", run])
    assert p.returncode == 0, p.stderr[-3000:]
    return run


def _curve(run, kind):
    """The run's records without wall-clock fields (those differ between any two runs)."""
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in read_metrics(run, kind)]


def _snapshot(run):
    return {os.path.relpath(os.path.join(d, f), run): open(os.path.join(d, f), "rb").read()
            for d, _, fs in os.walk(run) for f in fs}


def test_damaged_run_is_refused_with_named_error_and_nothing_written(finished, tmp_path, cli):
    from negint_ds.train.cli import main

    run = str(tmp_path / "run")
    shutil.copytree(finished, run)
    os.unlink(os.path.join(run, "checkpoints", "latest.json"))
    before = _snapshot(run)
    code, _, err = cli(main, ["--run_dir", run, "--resume", "--set", "train.max_steps=12"])
    assert code == 2 and "latest.json is missing" in err and "--resume_from" in err, err[-2000:]
    assert _snapshot(run) == before, "a refused resume must not write anything"


def test_resume_past_max_steps_says_so_and_writes_nothing(finished, tmp_path, cli):
    from negint_ds.train.cli import main

    run = str(tmp_path / "run")
    shutil.copytree(finished, run)
    before = _snapshot(run)
    for steps, says in ((4, "past train.max_steps=4; nothing to train"), (8, "already finished at step 8")):
        code, _, err = cli(main, ["--run_dir", run, "--resume", "--set", f"train.max_steps={steps}"])
        assert code == 0 and says in err, err[-2000:]
    assert _snapshot(run) == before


def test_truncated_latest_checkpoint_falls_back_and_continues_exactly(finished, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(finished, run)
    model = os.path.join(run, "checkpoints", "step_00000008", "mp_rank_00_model_states.pt")
    with open(model, "r+b") as f:
        f.truncate(os.path.getsize(model) // 2)
    p = run_launcher(["--run_dir", run, "--resume"])
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resuming from checkpoint step_00000004 (step 4); skipped step_00000008" in p.stderr
    assert os.path.isdir(os.path.join(run, "checkpoints", "quarantine", "step_00000008"))
    assert _curve(run, "train") == _curve(finished, "train")
    assert _curve(run, "valid") == _curve(finished, "valid")
    wa, wb = load_export(finished), load_export(run)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_checkpoint_of_other_data_is_refused_before_anything_is_written(finished, tiny_data, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(finished, run)
    man_path = os.path.join(run, "checkpoints", "step_00000008", MANIFEST)
    man = json.load(open(man_path))
    man["vocab_sha256"] = "0" * 64
    json.dump(man, open(man_path, "w"))
    with pytest.raises(Exception, match=r"checkpoint step_00000008 was trained with vocabulary 000000000000.*"
                                        r"python -m negint_ds.prepare"):
        prepare_run(RunArgs(run_dir=run, resume=True), 1)


@pytest.mark.slow
def test_sigkill_at_random_points_of_saves_then_resume_matches_uninterrupted(tiny_data, ds2, tmp_path):
    """Five SIGKILLs at seeded random writes of checkpoint saves (cut mid-file or just after), each followed
    by --resume: the final losses, validation curve and weights equal an uninterrupted run's."""
    steps = 32
    ref = str(tmp_path / "ref")
    pool = ThreadPoolExecutor(1)  # the uninterrupted reference runs beside the killed runs
    ref_done = pool.submit(run_launcher, _common(tiny_data, ds2, steps) + ["--run_dir", ref])
    run, rng, kills = str(tmp_path / "killed"), random.Random(8), []
    args = _common(tiny_data, ds2, steps) + ["--run_dir", run]
    while len(kills) < 5:
        spec = f"{rng.randrange(0, 9)}:{rng.choice(['partial', 'after'])}:{rng.uniform(0.05, 0.95):.2f}"
        cmd = [sys.executable, KILLER, "--no_progress"] + args
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO,
                           env=child_env(MASTER_PORT=str(free_port()), NEGINT_KILL=spec))
        assert p.returncode in (-9, 0), p.stderr[-3000:]
        assert p.returncode == -9, f"run finished before the kill at {spec}; make max_steps larger"
        kills.append(spec)
        args = ["--run_dir", run, "--resume"]
        for d in os.listdir(os.path.join(run, "checkpoints")):
            assert not d.endswith(".pt")
    p = run_launcher(["--run_dir", run, "--resume"])
    assert p.returncode == 0, (kills, p.stderr[-3000:])
    assert ref_done.result().returncode == 0
    pool.shutdown()
    assert _curve(run, "train") == _curve(ref, "train"), kills
    assert _curve(run, "valid") == _curve(ref, "valid"), kills
    wa, wb = load_export(ref), load_export(run)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), kills
    rd = RunDir(run)
    assert all(verify(os.path.join(rd.checkpoints, t)).ok for t in rd.checkpoint_tags())


def test_interrupted_first_save_resumes_but_deleted_checkpoints_are_refused(rd):
    assert rd.resume_point().tag is None  # a new run: latest.json exists and names nothing yet
    _fake_checkpoint(rd, 4, commit=False)  # killed between the first manifest and latest.json
    assert rd.resume_point().tag == "step_00000004"
    rd.commit_checkpoint("step_00000004", 4, keep=1)
    shutil.rmtree(rd.checkpoints + "/step_00000004")
    with pytest.raises(RunDirError, match="names checkpoint step_00000004 but .* holds none"):
        rd.resume_point()
    rd2 = RunDir(rd.root + "2")
    rd2.create(False, "name: x\n", {})
    _fake_checkpoint(rd2, 4, manifest=False, commit=False)  # killed inside the first save
    p = rd2.resume_point()
    assert p.tag is None and p.step == 0 and p.quarantine == ["step_00000004"]
