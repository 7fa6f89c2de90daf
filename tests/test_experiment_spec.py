"""Experiment specs (issue 11): expansion into runs, named errors before anything runs, the SLURM scripts' skip and
resume logic, the executor's failure handling, and the statistics of the tables and findings against hand values."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import pytest
import yaml

from negint_ds.config.loader import ConfigError
from negint_ds.experiments import collect, findings
from negint_ds.experiments.cli import dry_run_text, main
from negint_ds.experiments.cluster import write_cluster
from negint_ds.experiments.execute import Executor, load_status, stage_state, write_inputs
from negint_ds.experiments.plan import Plan, Run, Stage, expand, parameter_counts
from negint_ds.experiments.report import build_report
from negint_ds.experiments.spec import load_spec


def _plan(name: str, tmp_path, *sets: str) -> Plan:
    spec, path = load_spec(name, [f"data_root={tmp_path / 'data'}", *sets])
    return expand(spec, path, str(tmp_path / "exp"))


def _write_spec(tmp_path, **fields) -> str:
    base = {"name": "t", "base": "jointpair_en_sw_demo", "rows": ["Mono", "JointPair"], "pairs": ["sw"],
            "data_root": str(tmp_path / "data")}
    base.update(fields)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(base, sort_keys=False), encoding="utf-8")
    return str(path)


def test_paper_demo_expands_to_the_rows_each_table_needs(tmp_path):
    plan = _plan("paper_demo", tmp_path)
    ids = {r.id: r for r in plan.runs}
    # sw: 5 rows, ar: 1, fr: 2, fr_l: 2, hi: 2 — two seeds each
    assert len(plan.runs) == 2 * (5 + 1 + 2 + 2 + 2)
    assert ids["mono-sw-s0"].langs == ["sw"] and ids["jointpair-sw-s1"].langs == ["sw", "en"]
    assert ids["jointtri-hi-s0"].langs == ["hi", "bn", "en"]
    r = ids["ffn-sw-s0"].recipe
    assert r["model"]["language_specific"] == ["ffn"] and r["train"]["seed"] == 0
    meta = ids["meta_adpt-sw-s1"].recipe
    assert meta["model"]["adapters"]["kind"] == "language" and meta["meta"]["enabled"] is True
    assert meta["meta"]["val_batch_size"] == 16 and meta["train"]["seed"] == 1  # row_set applied
    assert ids["adpt-sw-s0"].recipe["model"]["adapters"]["kind"] == "language"
    assert "meta" not in ids["adpt-sw-s0"].recipe or not ids["adpt-sw-s0"].recipe["meta"].get("enabled")
    fr_l = ids["mono-fr_l-s0"].recipe["data"]["languages"]["fr_l"]
    assert fr_l == {"source": "bible", "lang": "fr", "max_train_sentences": 3000}
    assert all(r.recipe["train"]["max_steps"] == 500 for r in plan.runs)
    # the probe rides on JointPair only; Mono has one language and no probe
    assert ids["jointpair-ar-s0"].recipe["analysis"]["grad_conflict"]["enabled"] is True
    assert "grad_conflict" not in ids["adpt-sw-s0"].recipe.get("analysis", {})
    # rows of one pair share the data (and vocabulary); Mono and the subsampled variant have their own
    assert ids["ffn-sw-s0"].data_dir == ids["jointpair-sw-s1"].data_dir != ids["mono-sw-s0"].data_dir
    assert ids["jointpair-fr-s0"].data_dir != ids["jointpair-fr_l-s0"].data_dir
    stages = {r.id: [s.name for s in r.stages] for r in plan.runs}
    assert stages["jointpair-ar-s0"] == ["pretrain", "finetune", "bpc", "masks", "mask_report"]
    assert stages["jointpair-sw-s0"] == ["pretrain", "finetune", "bpc"]
    assert stages["ffn-sw-s0"] == ["pretrain", "finetune"]


def test_masks_stage_is_done_when_every_mask_run_has_its_summary(tmp_path):
    # the masks command writes <run>/analysis/masks/<lang>_seed<s>/summary.json last; mask_similarity.csv is the
    # mask_report stage's output, so it must not be the masks stage's marker (that stage would always "fail")
    plan = _plan("paper_demo", tmp_path)
    run = next(r for r in plan.runs if r.id == "jointpair-ar-s0")
    st = {s.name: s for s in run.stages}
    root = os.path.join(run.run_dir, "analysis", "masks")
    assert sorted(st["masks"].done) == sorted(os.path.join(root, f"{lg}_seed{s}", "summary.json")
                                              for lg in ("ar", "en") for s in (0, 1))
    assert st["mask_report"].done == [os.path.join(run.run_dir, "analysis", "mask_similarity.csv")]
    for f in st["masks"].done:
        os.makedirs(os.path.dirname(f), exist_ok=True)
        open(f, "w").write("{}")
    assert stage_state(st["masks"]) == "done" and stage_state(st["mask_report"]) == "todo"


def test_scaling_demo_grows_languages_with_fixed_data_per_language(tmp_path):
    plan = _plan("scaling_demo", tmp_path)
    grid = [r for r in plan.runs if r.kind == "grid"]
    assert [len(r.langs) for r in grid if r.row == "Joint"] == [2, 4, 8]
    n8 = next(r for r in grid if r.id == "joint-n8-s0")
    assert n8.langs == ["en", "sw", "fr", "ar", "hi", "ru", "zh", "de"]
    assert all(c["max_train_sentences"] == 4000 for c in n8.recipe["data"]["languages"].values())
    assert {r.recipe["model"]["dim"] for r in grid} == {128}  # fixed model size
    cost = [r for r in plan.runs if r.kind == "cost"]
    meta = [(len(r.langs), r.variant) for r in cost if r.row == "+meta adpt"]
    assert meta == [(2, ""), (4, ""), (4, "K=2"), (8, ""), (8, "K=2"), (16, ""), (16, "K=2")]
    k2 = next(r for r in cost if r.id == "cost-meta_adpt-n16-k2")
    assert k2.recipe["meta"]["langs_per_step"] == 2 and k2.recipe["train"]["max_steps"] == 30
    full = next(r for r in cost if r.id == "cost-meta_adpt-n16")
    assert full.recipe["meta"]["langs_per_step"] is None  # the full sum, although the grid row sets K = 2
    assert next(r for r in grid if r.id == "meta_adpt-n8-s0").recipe["meta"]["langs_per_step"] == 2
    assert [s.name for s in k2.stages] == ["pretrain"]


def test_phi_memory_grows_linearly_with_languages(tmp_path):
    plan = _plan("scaling_demo", tmp_path)
    by_n = {len(r.langs): parameter_counts(r.recipe) for r in plan.runs if r.kind == "cost" and r.row == "+adpt"}
    # adapters after attention and FFN in 2 layers, d = 128, b = 32: 2 · 2 · (2·128·32 + 32 + 128)
    per = 2 * 2 * (2 * 128 * 32 + 32 + 128)
    assert {c["phi_per_lang"] for c in by_n.values()} == {per}
    for n, c in by_n.items():
        assert c["phi_bytes_total"] == 16 * per * n
    joint = next(r for r in plan.runs if r.kind == "cost" and r.row == "Joint")
    assert parameter_counts(joint.recipe)["phi_per_lang"] == 0


def test_every_builtin_spec_expands(tmp_path):
    from negint_ds.experiments.spec import SPEC_DIR

    for f in sorted(os.listdir(SPEC_DIR)):
        plan = _plan(os.path.splitext(f)[0], tmp_path)
        assert plan.runs, f


def test_bad_specs_are_named_errors_collected_at_once(tmp_path):
    path = _write_spec(tmp_path, rows=["Mono", "+fnn", "JointTri"], pairs=["sw", "xx"],
                       finetune={"task": "builtin"}, seeds=[0, 0], colour="red")
    with pytest.raises(ConfigError) as e:
        spec, p = load_spec(path)
    msg = str(e.value)
    for needle in ("unknown row '+fnn'", "seeds: must be a non-empty list without repeats", "spec.colour: unknown key",
                   "tri: row JointTri needs a third language for 'sw'"):
        assert needle in msg, msg


def test_run_level_problems_name_the_run(tmp_path):
    # an unknown language code, a task without data for a pair, a recipe field the spec's set gets wrong
    path = _write_spec(tmp_path, pairs=["sw", "xx"], finetune={"task": "pattern_pos"},
                       set=["train.max_stepz=3"])
    spec, p = load_spec(path)
    with pytest.raises(ConfigError) as e:
        expand(spec, p, str(tmp_path / "exp"))
    msg = str(e.value)
    assert "run mono-xx-s0" in msg and "unknown language code 'xx'" in msg
    assert "run jointpair-sw-s0" in msg and "train.max_stepz: unknown key" in msg
    assert not (tmp_path / "exp").exists()


def test_task_without_data_for_a_pair_is_refused(tmp_path):
    spec, p = load_spec(_write_spec(tmp_path, finetune={"task": "pattern_pos"}))
    with pytest.raises(ConfigError) as e:
        expand(spec, p, str(tmp_path / "exp"))
    assert "finetune.task: pattern_pos has no data for 'sw' (row Mono, group sw" in str(e.value)
    spec, p = load_spec(_write_spec(tmp_path, finetune={"task": "nerr"}))
    with pytest.raises(ConfigError, match="unknown task 'nerr'"):
        expand(spec, p, str(tmp_path / "exp"))


def test_zero3_with_phi_and_probe_micro_batch_are_refused(tmp_path):
    spec, p = load_spec(_write_spec(tmp_path, rows=["JointPair", "+adpt"], ds_config="ds_configs/cpu_zero3.json",
                                    analyses={"grad_conflict": {"enabled": True, "sequences": 20}}))
    with pytest.raises(ConfigError) as e:
        expand(spec, p, str(tmp_path / "exp"))
    msg = str(e.value)
    assert "run adpt-sw-s0: ZeRO-3" in msg and "run jointpair-sw-s0: ZeRO-3" not in msg
    assert "grad_conflict.sequences=20 is not a multiple of the training micro-batch 32" in msg


def test_dry_run_lists_runs_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "exp"
    code = main(["--spec", "paper_demo", "--set", f"data_root={tmp_path / 'data'}", "--out_dir", str(out), "--dry_run"])
    text = capsys.readouterr().out
    assert code == 0 and "24 runs" in text and "meta_adpt-sw-s1" in text and "estimated time left" in text
    assert not out.exists() and not (tmp_path / "data").exists()


def test_a_changed_recipe_under_an_existing_run_is_refused(tmp_path):
    plan = _plan("smoke", tmp_path)
    write_inputs(plan)
    os.makedirs(plan.runs[0].run_dir)
    write_inputs(plan)  # unchanged: fine
    plan2 = _plan("smoke", tmp_path, "row_set={Mono: [train.max_steps=9]}")
    from negint_ds.experiments.execute import ExperimentError

    with pytest.raises(ExperimentError, match=f"{plan.runs[0].id} \\(train differ\\)"):
        write_inputs(plan2)


def _stub_stage(name: str, code: int, out: str) -> Stage:
    """A stage whose script writes its done file and exits with ``code`` (an absolute script path is used as is)."""
    script = out + ".py"
    with open(script, "w") as f:
        f.write(f"import sys, pathlib\nif {code} == 0:\n    pathlib.Path({out!r}).write_text('x')\nsys.exit({code})\n")
    return Stage(name, script, [], done=[out])


def test_executor_records_a_failure_and_runs_the_others(tmp_path):
    exp = tmp_path / "exp"
    runs = []
    for i, code in enumerate((0, 1, 0)):
        d = str(exp / "runs" / f"r{i}")
        os.makedirs(d)
        st = [_stub_stage("pretrain", code, os.path.join(d, "done1")), _stub_stage("finetune", 0, os.path.join(d, "done2"))]
        runs.append(Run(f"r{i}", "JointPair", "sw", 0, ["sw", "en"], {}, "", d, "", st))
    spec, path = load_spec("smoke")
    plan = Plan(spec, path, str(exp), runs, {}, {})
    os.makedirs(exp / "logs")
    assert Executor(plan, progress=False).run() == 1
    st = load_status(plan)
    assert st["r0"]["pretrain"]["state"] == st["r2"]["finetune"]["state"] == "done"
    assert st["r1"]["pretrain"]["state"] == "failed" and st["r1"]["pretrain"]["returncode"] == 1
    assert st["r1"]["pretrain"]["log"].endswith("logs/r1.pretrain.log") and os.path.isfile(st["r1"]["pretrain"]["log"])
    assert st["r1"]["finetune"]["state"] == "blocked"
    # again: finished stages are not re-run (their logs untouched), the failed one is tried again
    mtime = os.path.getmtime(exp / "logs" / "r0.pretrain.log")
    assert Executor(plan, progress=False).run() == 1
    assert os.path.getmtime(exp / "logs" / "r0.pretrain.log") == mtime
    assert open(exp / "logs" / "r1.pretrain.log").read().count("$ ") == 2


def _fake_outputs(run: Run, ppl: float, acc: float, acc_std: float, zs: float | None,
                  floor: float | None = None) -> None:
    d = run.run_dir
    os.makedirs(os.path.join(d, "downstream", "builtin", "bible_genre-within"), exist_ok=True)
    json.dump({"step": 8, "valid": {l: {"ppl": ppl} for l in run.langs}}, open(os.path.join(d, "final_ppl.json"), "w"))
    rows = [{"task": "bible_genre", "setting": "within", "train_lang": "sw", "test_lang": "sw", "n_seeds": 2,
             "accuracy_mean": acc, "accuracy_std": acc_std, "dev_mean": acc}]
    if floor is not None:
        rows[0]["majority_accuracy"] = floor
    json.dump({"task": "bible_genre", "metric": "accuracy", "rows": rows},
              open(os.path.join(d, "downstream", "builtin", "bible_genre-within", "results.json"), "w"))
    if zs is not None:
        os.makedirs(os.path.join(d, "downstream", "builtin", "bible_genre-zero_shot"), exist_ok=True)
        rows = [{"task": "bible_genre", "setting": "zero_shot", "train_lang": "en", "test_lang": "sw", "n_seeds": 1,
                 "accuracy_mean": zs, "accuracy_std": 0.0, "dev_mean": zs}]
        json.dump({"task": "bible_genre", "metric": "accuracy", "rows": rows},
                  open(os.path.join(d, "downstream", "builtin", "bible_genre-zero_shot", "results.json"), "w"))


def test_report_tables_and_findings_from_run_outputs(tmp_path):
    plan = _plan("smoke", tmp_path)
    write_inputs(plan)
    ids = {r.id: r for r in plan.runs}
    _fake_outputs(ids["mono-sw-s0"], 100.0, 0.60, 0.01, None)
    _fake_outputs(ids["mono-sw-s1"], 110.0, 0.62, 0.01, None)
    _fake_outputs(ids["jointpair-sw-s0"], 120.0, 0.40, 0.02, 0.30)
    _fake_outputs(ids["jointpair-sw-s1"], 130.0, 0.44, 0.02, 0.32)
    _fake_outputs(ids["adpt-sw-s0"], 90.0, 0.50, 0.05, 0.20)  # one seed of +adpt: its spread is the ft seeds'
    status = {"adpt-sw-s1": {"pretrain": {"state": "failed", "log": os.path.join(plan.out_dir, "logs", "x.log")}}}
    text = build_report(plan, status)
    # mean ± sample std over the two pretraining seeds, in percent, n shown
    sd = lambda a, b: abs(a - b) / math.sqrt(2)  # noqa: E731 — sample std of two values
    assert f"| Mono | {61.0:.1f} ± {100 * sd(0.60, 0.62):.1f} (2) |" in text
    assert f"{100 * 0.42:.1f} ± {100 * sd(0.40, 0.44):.1f} (2)" in text
    assert f"| 105.0 ± {sd(100, 110):.1f} (2) |" in text  # Mono sw validation perplexity
    # +adpt: one pretraining seed finished, the other failed: the cell shows the finished seed with its ft spread
    assert "50.0 ± 5.0 (2 ft)" in text
    assert "| +adpt — failed (pretrain: logs/x.log) |" in text
    rows = list(__import__("csv").DictReader(open(os.path.join(plan.out_dir, "tables", "within.csv"))))
    mono = next(r for r in rows if r["row"] == "Mono")
    assert float(mono["mean"]) == pytest.approx(0.61) and float(mono["std"]) == pytest.approx(sd(0.60, 0.62))
    assert mono["n"] == "2" and mono["spread"] == "pretraining seeds" and mono["seeds"] == "0 1"
    f = open(os.path.join(plan.out_dir, "findings.md")).read()
    # Mono − JointPair = 0.19 vs 2 SE = 2·sqrt(sd1²/2 + sd2²/2)
    se = math.sqrt(sd(0.60, 0.62) ** 2 / 2 + sd(0.40, 0.44) ** 2 / 2)
    assert f"difference +0.1900 in the claimed direction, 2 SE = {2 * se:.4f}" in f
    assert "| F1: Mono beats JointPair within-language on a high-resource language (negative interference) | " \
           "**reproduced (partly tested)** |" in f  # bpc was not measured in this fake


def test_a_side_at_its_majority_class_floor_makes_the_comparison_inconclusive(tmp_path):
    plan = _plan("smoke", tmp_path)
    write_inputs(plan)
    ids = {r.id: r for r in plan.runs}
    # Mono clearly above JointPair, but JointPair's head sits 0.5 points above the 22.0 floor: a collapsed classifier
    accs = (("mono-sw-s0", 0.36), ("mono-sw-s1", 0.37), ("jointpair-sw-s0", 0.224), ("jointpair-sw-s1", 0.226))
    for rid, acc in accs:
        _fake_outputs(ids[rid], 100.0, acc, 0.0, None, floor=0.22)
    text = build_report(plan, {})
    assert "| *majority class* | *22.0* |" in text
    assert "@majority" not in open(os.path.join(plan.out_dir, "tables", "within.md")).read()  # no floor column
    f = open(os.path.join(plan.out_dir, "findings.md")).read()
    line = next(l for l in f.splitlines() if l.startswith("- Mono > JointPair: bible_genre/within/accuracy"))
    assert "**inconclusive**" in line and "JointPair 22.5 is at or below the majority-class floor 22.0" in line
    assert "Mono 36.5 is at" not in line
    # 1.5 points above the floor is learning, not the prior: the usual 2-SE rule decides again
    for rid, acc in (("jointpair-sw-s0", 0.234), ("jointpair-sw-s1", 0.236)):
        _fake_outputs(ids[rid], 100.0, acc, 0.0, None, floor=0.22)
    build_report(plan, {})
    f = open(os.path.join(plan.out_dir, "findings.md")).read()
    line = next(l for l in f.splitlines() if l.startswith("- Mono > JointPair: bible_genre/within/accuracy"))
    assert "**reproduced**" in line and "floor" not in line


def test_report_summarises_mask_similarity_per_pair_and_lists_only_png_figures(tmp_path):
    plan = _plan("smoke", tmp_path)
    write_inputs(plan)
    run = next(r for r in plan.runs if r.id == "jointpair-sw-s0")
    d = os.path.join(run.run_dir, "analysis")
    os.makedirs(d)
    with open(os.path.join(d, "mask_similarity.csv"), "w") as f:
        f.write("layer,component,pair,run_a,run_b,cosine,n_gates\n0,ffn,sw-en,a,b,0.2,4\n1,ffn,sw-en,a,b,0.6,4\n"
                "0,ffn,sw-sw,a,b,0.9,4\n1,ffn,sw-sw,a,b,nan,4\n")
    os.makedirs(os.path.join(plan.out_dir, "figures", "warmup_sw"))  # a directory of the warm-up report
    open(os.path.join(plan.out_dir, "figures", "grad_conflict_runs.csv"), "w").close()
    text = build_report(plan, {})
    assert "| jointpair-sw-s0 | sw-en | ffn | 0.400 | 0.200 |" in text  # mean and min of 0.2 and 0.6
    assert "| jointpair-sw-s0 | sw-sw | ffn | 0.900 | 0.900 |" in text  # a non-finite layer is left out
    assert "figures/warmup_sw)" not in text and "grad_conflict_runs.csv" not in text


def test_compare_rule_against_hand_values():
    A = lambda m, s, n, meas="x": collect.Aggregate("a", "g", meas, "sw", m, s, n, "pretraining seeds")  # noqa: E731
    se = math.sqrt(0.1 ** 2 / 3 + 0.1 ** 2 / 3)
    c = findings.compare("w", A(0.5, 0.1, 3), A(0.3, 0.1, 3), "a", "b")
    assert c.verdict == "reproduced" and c.se == pytest.approx(se) and c.diff == pytest.approx(0.2)
    assert findings.compare("w", A(0.4, 0.1, 3), A(0.3, 0.1, 3), "a", "b").verdict == "inconclusive"  # 0.1 < 2 SE
    assert findings.compare("w", A(0.1, 0.1, 3), A(0.3, 0.1, 3), "a", "b").verdict == "not reproduced"
    # bits per character: lower is better
    assert findings.compare("w", A(1.0, 0.01, 2, "bpc"), A(1.2, 0.01, 2, "bpc"), "a", "b").verdict == "reproduced"
    assert findings.compare("w", A(0.9, None, 1), A(0.1, None, 1), "a", "b").verdict == "inconclusive"  # one seed
    C = lambda v: findings.Comparison("w", "a", "b", 0.0, None, v, "")  # noqa: E731
    assert findings.combine([C("reproduced"), C("reproduced")]) == "reproduced"
    assert findings.combine([C("reproduced"), C("not tested")]) == "reproduced (partly tested)"
    assert findings.combine([C("reproduced"), C("not reproduced")]) == "mixed"
    assert findings.combine([C("inconclusive"), C("not reproduced")]) == "not reproduced"
    assert findings.combine([C("not tested")]) == "not tested"


def test_f5_judges_the_subsampled_language_on_downstream_and_bits_per_character(tmp_path):
    spec, _ = load_spec("paper_demo", [f"data_root={tmp_path}"])
    A = lambda row, meas, m, s: collect.Aggregate(row, "fr_l", meas, "fr_l", m, s, 2, "pretraining seeds")  # noqa: E731
    acc = "bible_genre/within/accuracy"
    aggs = {("JointPair", "fr_l", acc, "fr_l"): A("JointPair", acc, 0.50, 0.01),
            ("Mono", "fr_l", acc, "fr_l"): A("Mono", acc, 0.40, 0.01),
            # bits per character: JointPair lower (better) by 0.3 against 2 SE = 2·sqrt(2·0.01²/2) = 0.02
            ("JointPair", "fr_l", "bpc", "fr_l"): A("JointPair", "bpc", 2.0, 0.01),
            ("Mono", "fr_l", "bpc", "fr_l"): A("Mono", "bpc", 2.3, 0.01)}
    f5 = next(f for f in findings.findings(spec, aggs, {}) if f["id"] == "F5")
    by = {c.what: c for c in f5["comparisons"]}
    assert set(by) == {f"JointPair > Mono: {acc} in fr_l (fr_l)", "JointPair > Mono: bits per character of fr_l (fr_l)"}
    bpc = by["JointPair > Mono: bits per character of fr_l (fr_l)"]
    assert bpc.diff == pytest.approx(0.3) and bpc.se == pytest.approx(0.01) and bpc.verdict == "reproduced"
    assert f5["verdict"] == "reproduced"  # full fr is high-resource: it belongs to F1, not F5
    # Mono with the lower bits per character: that comparison is significantly opposite, so F5 is mixed
    aggs[("Mono", "fr_l", "bpc", "fr_l")] = A("Mono", "bpc", 1.7, 0.01)
    f5 = next(f for f in findings.findings(spec, aggs, {}) if f["id"] == "F5")
    assert f5["verdict"] == "mixed"


def test_f2_compares_ar_with_full_fr_not_its_subsampled_variant(tmp_path):
    spec, _ = load_spec("paper_demo", [f"data_root={tmp_path}"])  # pairs sw, ar, fr, fr_l, hi
    P = lambda lg, vals: [{"pair": f"{lg}-en", "cosine": v} for v in vals]  # noqa: E731
    probes = {"ar": P("ar", [0.00, 0.02]), "fr": P("fr", [0.30, 0.32]), "fr_l": P("fr_l", [-0.5, -0.4])}
    f2 = next(f for f in findings.findings(spec, {}, probes) if f["id"] == "F2")
    c = next(c for c in f2["comparisons"] if c.what == "cos ar–en < cos fr–en over probes")
    assert c.diff == pytest.approx(0.31 - 0.01) and c.verdict == "reproduced"


def test_aggregate_spread_over_pretraining_then_finetuning_seeds():
    M = collect.Measurement
    ms = [M("r0", "Mono", "sw", 0, "m", "sw", 0.5, 0.1, 3), M("r1", "Mono", "sw", 1, "m", "sw", 0.7, 0.1, 3),
          M("r2", "JointPair", "sw", 0, "m", "sw", 0.4, 0.05, 3), M("r3", "+adpt", "sw", 0, "m", "sw", 0.3)]
    a = collect.aggregate(ms)
    mono = a[("Mono", "sw", "m", "sw")]
    assert mono.mean == pytest.approx(0.6) and mono.std == pytest.approx(math.sqrt(0.02)) and mono.n == 2
    jp = a[("JointPair", "sw", "m", "sw")]
    assert (jp.std, jp.n, jp.spread) == (0.05, 3, "fine-tuning seeds")
    ad = a[("+adpt", "sw", "m", "sw")]
    assert (ad.std, ad.n, ad.spread) == (None, 1, "none")


def test_slurm_scripts_skip_finished_and_resume_interrupted_stages(tmp_path):
    plan = _plan("smoke", tmp_path)
    write_inputs(plan)
    files = write_cluster(plan, "smoke")
    root = os.path.join(plan.out_dir, "cluster")
    assert {os.path.basename(f) for f in files} >= {"commands.sh", "runs.sbatch", "prepare.sbatch", "submit.sh"}
    sbatch = open(os.path.join(root, "runs.sbatch")).read()
    assert f"#SBATCH --array=0-{len(plan.runs) - 1}" in sbatch
    commands = open(os.path.join(root, "commands.sh")).read()
    assert commands.count("launchers/pretrain.py") == len(plan.runs)
    assert f"--deepspeed_config {os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'ds_configs', 'gpu_bf16_zero2.json')}" in commands
    # run one run's script with stub launchers: pretrain finished, finetune interrupted, bpc not started
    run = next(r for r in plan.runs if r.id == "jointpair-sw-s0")
    os.makedirs(os.path.join(run.run_dir, "downstream", "builtin"))
    open(os.path.join(run.run_dir, "final_ppl.json"), "w").write("{}")
    open(os.path.join(run.run_dir, "downstream", "builtin", "finetune.json"), "w").write("{}")
    stub = tmp_path / "bin"
    stub.mkdir()
    calls = tmp_path / "calls.txt"
    for name in ("python", "fakelaunch"):
        (stub / name).write_text(f"#!/bin/sh\necho {name} \"$@\" >> {calls}\n")
        (stub / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}", "LAUNCH": "fakelaunch"}
    subprocess.run(["bash", os.path.join(root, "runs", f"{run.id}.sh")], check=True, env=env)
    lines = calls.read_text().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("fakelaunch launchers/finetune.py") and lines[0].endswith("--resume")
    assert lines[1].startswith("python launchers/analyze.py bpc") and "--resume" not in lines[1]
    # on a second node of a multi-node job, one-process stages are left to the first node
    calls.unlink()
    subprocess.run(["bash", os.path.join(root, "runs", f"{run.id}.sh")], check=True, env={**env, "SLURM_NODEID": "1"})
    assert [l.split()[1] for l in calls.read_text().splitlines()] == ["launchers/finetune.py"]


_TERM_DRIVER = """
import os, sys
from negint_ds.experiments.execute import Executor
from negint_ds.experiments.plan import Plan, Run, Stage
from negint_ds.experiments.spec import load_spec
exp, stage_script, done = sys.argv[1:4]
spec, path = load_spec("smoke")
run = Run("r0", "JointPair", "sw", 0, ["sw", "en"], {}, "", os.path.join(exp, "runs", "r0"), "",
          [Stage("pretrain", stage_script, [], done=[done])])
try:
    Executor(Plan(spec, path, exp, [run], {}, {}), progress=False).run()
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_sigterm_reaches_the_running_stage_and_is_recorded(tmp_path):
    """A scheduler's SIGTERM to the runner is passed on to the stage's process (which checkpoints on it), the stage
    is recorded as interrupted, and the runner exits 130; nothing is left running."""
    exp = tmp_path / "exp"
    os.makedirs(exp / "logs")
    ready, got = tmp_path / "ready", tmp_path / "got_sigterm"
    stage = tmp_path / "stage.py"
    stage.write_text(f"import signal, sys, time, pathlib\n"
                     f"signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path({str(got)!r}).write_text('x'), "
                     f"sys.exit(0)))\npathlib.Path({str(ready)!r}).write_text('x')\ntime.sleep(120)\n")
    driver = tmp_path / "driver.py"
    driver.write_text(_TERM_DRIVER)
    p = subprocess.Popen([sys.executable, str(driver), str(exp), str(stage), str(tmp_path / "done")])
    for _ in range(600):
        if ready.exists():
            break
        time.sleep(0.1)
    assert ready.exists(), "the stage never started"
    p.send_signal(__import__("signal").SIGTERM)
    assert p.wait(timeout=60) == 130
    assert got.exists(), "the stage's process did not get the SIGTERM"
    assert load_status(Plan(None, "", str(exp), [], {}, {}))["r0"]["pretrain"]["state"] == "interrupted"
