"""Fig. 4c: mean training loss per language after warm-up, from hand-written metrics with known means."""
import csv
import json
import math
import os

import pytest
import yaml

from conftest import recipe
from negint_ds.analysis.pretrained import AnalysisError
from negint_ds.analysis.warmup_loss import COLUMNS, WarmupLossError, plot_warmup_losses, warmup_losses


def make_run(root, dirname: str, name: str, warmup: int, records: list[dict] | None) -> str:
    """A run directory with a recipe-built config.yaml and (unless None) the given train/valid records."""
    rd = os.path.join(str(root), dirname)
    os.makedirs(rd)
    cfg = recipe("/unused", "/unused/data", name=name, train={"warmup_steps": warmup})
    with open(os.path.join(rd, "config.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f)
    if records is not None:
        with open(os.path.join(rd, "metrics.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    return rd


def train_records(n: int, en=lambda s: float(s), sw=lambda s: 10.0 * s, sw_every: int = 1) -> list[dict]:
    """Steps 1..n; loss_en = en(step); loss_sw = sw(step) only on steps divisible by sw_every (as when the language
    did not train in a logging window); a valid record in between that must be ignored."""
    out = []
    for s in range(1, n + 1):
        r = {"kind": "train", "step": s, "loss": 0.0, "loss_en": en(s), "lr": 1e-4}
        if s % sw_every == 0:
            r["loss_sw"] = sw(s)
        out.append(r)
        if s == 5:
            out.append({"kind": "valid", "step": 5, "loss_en": 1000.0, "loss_sw": 1000.0, "ppl_en": 1e9})
    return out


def test_default_window_starts_after_warmup_and_means_are_exact(tmp_path):
    jp = make_run(tmp_path, "jp_dir", "jointpair", warmup=5, records=train_records(10))
    ad = make_run(tmp_path, "ad_dir", "adpt", warmup=2, records=train_records(8, en=lambda s: 2.0 * s, sw_every=2))
    rows = warmup_losses([jp, ad])
    got = {(r["run"], r["lang"]): r for r in rows}
    assert [(r["run"], r["lang"]) for r in rows] == [("jointpair", "en"), ("jointpair", "sw"), ("adpt", "en"),
                                                     ("adpt", "sw")]
    # jointpair: warmup 5 -> steps 6..10; en = mean(6..10) = 8, sw = 10 * 8 = 80
    assert got["jointpair", "en"]["mean_loss"] == pytest.approx(8.0, abs=0)
    assert got["jointpair", "sw"]["mean_loss"] == pytest.approx(80.0, abs=0)
    assert got["jointpair", "en"]["records"] == 5 and (got["jointpair", "en"]["from_step"],
                                                       got["jointpair", "en"]["to_step"]) == (5, 10)
    # adpt: warmup 2 -> steps 3..8; en = 2 * mean(3..8) = 11; sw only on even steps 4, 6, 8 -> 10 * 6 = 60
    assert got["adpt", "en"]["mean_loss"] == 11.0 and got["adpt", "en"]["records"] == 6
    assert got["adpt", "sw"]["mean_loss"] == 60.0 and got["adpt", "sw"]["records"] == 3
    assert got["adpt", "sw"]["from_step"] == 2 and got["adpt", "sw"]["run_dir"] == os.path.abspath(ad)


def test_explicit_window_and_nonfinite(tmp_path):
    recs = train_records(10)
    recs[7]["loss_sw"], recs[7]["nonfinite"] = None, ["loss_sw"]  # step 7 (index 7 after the valid record at 5)
    assert recs[7]["step"] == 7
    rd = make_run(tmp_path, "r", "r", warmup=5, records=recs)
    rows = {r["lang"]: r for r in warmup_losses([rd], from_step=1, to_step=4)}
    assert rows["en"]["mean_loss"] == 3.0 and rows["en"]["records"] == 3  # steps 2, 3, 4
    assert (rows["en"]["from_step"], rows["en"]["to_step"]) == (1, 4)
    rows = {r["lang"]: r for r in warmup_losses([rd])}  # the window holds the null: the mean is undefined
    assert math.isnan(rows["sw"]["mean_loss"]) and rows["sw"]["nonfinite"] == 1 and rows["sw"]["records"] == 5
    assert rows["en"]["mean_loss"] == 8.0 and rows["en"]["nonfinite"] == 0


def test_plot_writes_png_and_csv_of_the_plotted_numbers(tmp_path):
    jp = make_run(tmp_path, "a", "jointpair", warmup=5, records=train_records(10, en=lambda s: s / 3))
    ad = make_run(tmp_path, "b", "jointpair", warmup=5, records=train_records(10, sw=lambda s: s / 7))
    rows = warmup_losses([jp, ad])
    png = str(tmp_path / "out" / "fig4c.png")
    csv_path = plot_warmup_losses(rows, png)
    assert csv_path == str(tmp_path / "out" / "fig4c.csv")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(csv_path, encoding="utf-8") as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == list(COLUMNS) and len(got) == len(rows) == 4
    for g, r in zip(got, rows):
        assert (g["run"], g["lang"], g["run_dir"]) == (r["run"], r["lang"], r["run_dir"])
        assert float(g["mean_loss"]) == r["mean_loss"]  # full precision, not rounded
        assert int(g["records"]) == r["records"] and int(g["from_step"]) == 5 and int(g["to_step"]) == 10
    assert float(got[0]["mean_loss"]) == pytest.approx(8 / 3, rel=1e-15)


def test_bad_inputs_are_named_errors(tmp_path):
    no_metrics = make_run(tmp_path, "nom", "nom", warmup=5, records=None)
    with pytest.raises(WarmupLossError, match=r"metrics\.jsonl not found"):
        warmup_losses([no_metrics])
    with pytest.raises(WarmupLossError, match="no config.yaml"):
        warmup_losses([str(tmp_path)])
    only_valid = make_run(tmp_path, "val", "val", warmup=5, records=[{"kind": "valid", "step": 0, "ppl_en": 3.0}])
    with pytest.raises(WarmupLossError, match="no train records"):
        warmup_losses([only_valid])
    short = make_run(tmp_path, "short", "short", warmup=50, records=train_records(10))
    with pytest.raises(WarmupLossError, match=r"empty window from_step=50 ≥ to_step=10.*warmup_steps=50"):
        warmup_losses([short])
    with pytest.raises(WarmupLossError, match=r"no train records with 20 < step ≤ 30 .*steps 1–10"):
        warmup_losses([short], from_step=20, to_step=30)
    assert issubclass(WarmupLossError, AnalysisError)
    with pytest.raises(WarmupLossError, match="no rows"):
        plot_warmup_losses([], str(tmp_path / "x.png"))
