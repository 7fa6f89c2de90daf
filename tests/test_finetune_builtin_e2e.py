"""`launchers/finetune.py --task builtin` on a small Bible-trained en–fr run: the README's one command after the
Quickstart gives a within-language and a zero-shot table (issue 9)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, child_env, free_port, recipe, run_launcher, write_ds_config, write_recipe


@pytest.mark.slow
def test_builtin_suite_writes_within_zero_shot_and_retrieval_tables(corpus_dir, tmp_path):
    r = recipe(corpus_dir, str(tmp_path / "data"))
    r["data"]["languages"] = {"fr": {"source": "bible", "max_documents": 1200},
                              "en": {"source": "bible", "max_documents": 1200}}
    r["data"]["split"] = {"valid_fraction": 0.1, "test_fraction": 0.1}
    path = write_recipe(str(tmp_path / "r.yaml"), r)
    ds = write_ds_config(str(tmp_path / "ds.json"), stage=2)
    run = str(tmp_path / "run")
    p = subprocess.run([sys.executable, "-m", "negint_ds.prepare", "--config", path, "--no-progress"],
                       capture_output=True, text=True, cwd=REPO, env=child_env())
    assert p.returncode == 0, p.stderr[-2000:]
    p = run_launcher(["--deepspeed_config", ds, "--config", path, "--run_dir", run, "--set", "train.max_steps=6"])
    assert p.returncode == 0, p.stderr[-2000:]
    cmd = [sys.executable, os.path.join(REPO, "launchers", "finetune.py"), "--no_progress", "--deepspeed_config", ds,
           "--pretrained", run, "--task", "builtin", "--set", "epochs=1", "--set", "seeds=[1,2]",
           "--set", "batch_sizes=[8]", "--set", "max_train_examples=48", "--set", "max_eval_examples=40"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900,
                       env=child_env(MASTER_PORT=str(free_port())))
    assert p.returncode == 0, p.stderr[-3000:]
    out = os.path.join(run, "downstream", "builtin")
    tables = open(os.path.join(out, "tables.md"), encoding="utf-8").read()
    assert "## Within-language" in tables and "## Zero-shot cross-lingual" in tables
    for line in ("| bible_genre (accuracy) | =lg | ", "| bible_genre (accuracy) | en | ",
                 "| pattern_sentiment (accuracy) | =lg | ", "| pattern_sentiment (accuracy) | en | "):
        assert line in tables, tables
    assert "(2) |" in tables, "two seeds per cell in the tables"
    assert "bible_retrieval: accuracy@1" in tables and "| fr | " in tables
    assert sorted(d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d))) == [
        "bible_genre-within", "bible_genre-zero_shot", "pattern_sentiment-within", "pattern_sentiment-zero_shot"]
    assert p.stdout.count("Within-language") == 1, "the tables are printed at the end"
    for grid in ("bible_genre-within", "pattern_sentiment-zero_shot"):  # the majority-class floor beside each row
        rows = json.load(open(os.path.join(out, grid, "results.json"), encoding="utf-8"))["rows"]
        assert rows and all(0.0 <= r["majority_accuracy"] <= 1.0 and 0.0 <= r["majority_macro_f1"] <= 1.0 for r in rows)
        assert "majority class accuracy" in open(os.path.join(out, grid, "results.md"), encoding="utf-8").read()
