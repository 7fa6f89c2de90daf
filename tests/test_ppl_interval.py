"""Validation perplexity's masked-token count and 95% bootstrap interval, and the small-valid-set warning."""
import contextlib
import json
import logging
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import free_port, write_ds_config
from negint_ds.config import MLMConfig, ModelConfig
from negint_ds.data.batches import eval_batches
from negint_ds.model import build_model
from negint_ds.train.evaluate import check_eval_sizes, evaluate, token_losses
from negint_ds.train.ppl_interval import BOOTSTRAP_SEED, bootstrap_ppl_interval, ppl_summary, window_sums
from negint_ds.train.report import plot_curves, ppl_table

VOCAB, N_SPECIAL, MASK_ID, SEQ = 60, 5, 4, 32


# ----------------------------------------------------------------------------------------- the statistics
def reference_interval(loss_sums, counts, samples=1000, seed=BOOTSTRAP_SEED):
    """The documented recipe, written out plainly: sort windows, resample, percentiles of the mean loss, exp."""
    windows = sorted((float(l), int(c)) for l, c in zip(loss_sums, counts) if c > 0)
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(samples):
        idx = rng.integers(0, len(windows), size=len(windows))
        means.append(sum(windows[i][0] for i in idx) / sum(windows[i][1] for i in idx))
    means.sort()

    def quantile(q):  # numpy's default ("linear"): interpolate between order statistics at q·(B−1)
        h = q * (len(means) - 1)
        return means[int(h)] + (h - int(h)) * (means[min(int(h) + 1, len(means) - 1)] - means[int(h)])

    return math.exp(quantile(0.025)), math.exp(quantile(0.975))


def random_windows(n, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 9, size=n)
    per_window_loss = rng.normal(3.0, 0.4, size=n)  # a window-level effect: tokens of a window are correlated
    return per_window_loss * counts + rng.normal(0, 0.3, size=n) * np.sqrt(counts), counts


def test_bootstrap_matches_the_plain_reference_and_ignores_window_order():
    sums, counts = random_windows(50)
    lo, hi = bootstrap_ppl_interval(sums, counts)
    ref_lo, ref_hi = reference_interval(sums, counts)
    assert (lo, hi) == pytest.approx((ref_lo, ref_hi), rel=1e-12)
    point = math.exp(sums.sum() / counts.sum())
    assert lo < point < hi
    perm = np.random.default_rng(1).permutation(50)  # ranks and batches deliver windows in any order
    assert bootstrap_ppl_interval(sums[perm], counts[perm]) == (lo, hi)
    assert bootstrap_ppl_interval(sums, counts, seed=BOOTSTRAP_SEED + 1) != (lo, hi)


def test_bootstrap_agrees_with_the_delta_method_for_many_windows():
    """For many i.i.d. windows the ratio estimator is nearly normal: R ± 1.96·SE, SE from its linearisation."""
    sums, counts = random_windows(3000, seed=2)
    r = sums.sum() / counts.sum()
    se = math.sqrt(np.sum(((sums - r * counts) / counts.mean()) ** 2)) / len(sums)
    lo, hi = bootstrap_ppl_interval(sums, counts)
    assert math.log(hi) - r == pytest.approx(1.96 * se, rel=0.1)
    assert r - math.log(lo) == pytest.approx(1.96 * se, rel=0.1)


def test_degenerate_window_sets():
    assert bootstrap_ppl_interval([6.0] * 10, [3] * 10) == pytest.approx((math.exp(2.0), math.exp(2.0)))
    assert bootstrap_ppl_interval([6.0], [3]) is None  # one window: nothing to resample, no interval
    assert bootstrap_ppl_interval([6.0, 0.0], [3, 0]) is None  # a window without predictions does not count
    s = ppl_summary([6.0, 0.0], [3, 0])
    assert s == {"loss": 2.0, "ppl": pytest.approx(math.exp(2.0)), "ppl_lo": None, "ppl_hi": None,
                 "tokens": 3, "windows": 2}
    assert ppl_summary([], [])["tokens"] == 0
    with pytest.raises(ValueError, match="same length"):
        bootstrap_ppl_interval([1.0, 2.0], [1])
    with pytest.raises(ValueError, match=">= 0"):
        bootstrap_ppl_interval([1.0, 2.0], [1, -1])


def test_window_sums_add_each_rows_predictions():
    losses = torch.tensor([1.0, 2.0, 4.0, 8.0])
    pos = torch.tensor([0, 3, 2 * 4 + 1, 2 * 4 + 3])  # rows 0, 0, 2, 2 of a (3, 4) batch
    sums, counts = window_sums(losses, pos, 3, 4)
    assert sums.tolist() == [3.0, 0.0, 12.0] and counts.tolist() == [2, 0, 2]
    assert sums.dtype == torch.float64


# ------------------------------------------------------------------------------------- the model side
def tiny_model(seed=0, **cfg):
    torch.manual_seed(seed)
    m = build_model(ModelConfig(layers=2, dim=32, heads=2, ffn_dim=64, max_positions=SEQ, **cfg), VOCAB, 3)
    return m.eval()


def stream(n_windows, seed):
    tokens = np.random.default_rng(seed).integers(N_SPECIAL, VOCAB, size=n_windows * SEQ)
    return SimpleNamespace(tokens=tokens, num_tokens=tokens.size, path=f"stream{seed}")


def valid_sets(sizes, rank=0, world=1, batch_size=4):
    """``{lang: eval_batches}`` for synthetic streams of ``sizes[lang]`` windows."""
    return {lang: eval_batches(stream(n, seed=i), i, SEQ, None, batch_size, rank, world, MLMConfig(), VOCAB,
                               MASK_ID, N_SPECIAL, seed=7)
            for i, (lang, n) in enumerate(sizes.items())}


def model_mean_reference(model, batches, lang):
    """The pre-interval evaluation: the model's own mean loss, weighted by each batch's predictions."""
    total, n = 0.0, 0
    with torch.no_grad():
        for b, scored in batches:
            if scored:
                total += float(model(b.input_ids, b.lang_ids, b.pred_positions, b.targets, lang=lang)) * b.targets.numel()
                n += b.targets.numel()
    return total / n, n


@pytest.mark.parametrize("cfg", [{}, {"language_specific": ["ffn"]}])
def test_token_losses_are_the_terms_of_the_models_mean_loss(cfg):
    model = tiny_model(**cfg)
    for b, _ in valid_sets({"en": 6, "sw": 5})["sw"]:
        with torch.no_grad():
            terms = token_losses(model, b, lang=1)
            assert terms.shape == b.targets.shape
            assert float(terms.mean()) == pytest.approx(float(model(b.input_ids, b.lang_ids, b.pred_positions,
                                                                    b.targets, lang=1)), rel=1e-6)


@pytest.mark.parametrize("stage", [2, 3])
def test_token_losses_under_a_deepspeed_engine(process_group, tmp_path, stage):
    """Through ``engine.module``; under ZeRO-3 the head's weights are partitioned and must be gathered."""
    import deepspeed

    model = tiny_model()
    ds = json.load(open(write_ds_config(str(tmp_path / "ds.json"), stage=stage)))
    engine, *_ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()), config=ds)
    if stage == 3:  # as the trainer does: the tied head weight is used outside its embedding module
        deepspeed.zero.register_external_parameter(engine.module, engine.module.encoder.tok_emb.weight)
    batches = valid_sets({"en": 9})["en"]
    res = evaluate(engine, {"en": batches})["en"]
    engine.eval()
    loss, n = model_mean_reference(engine, batches, 0)
    assert res["loss"] == pytest.approx(loss, rel=1e-6) and res["tokens"] == n


def test_evaluate_reports_tokens_windows_and_interval():
    model = tiny_model()
    valid = valid_sets({"en": 9, "sw": 1})
    res = evaluate(model, valid)
    assert model.training  # evaluate puts the model back in training mode
    for i, lang in enumerate(valid):
        loss, n = model_mean_reference(model.eval(), valid[lang], i)
        r = res[lang]
        assert r["tokens"] == n and r["loss"] == pytest.approx(loss, rel=1e-6)
        assert r["ppl"] == pytest.approx(math.exp(loss), rel=1e-6)
    en, sw = res["en"], res["sw"]
    assert en["windows"] == 9 and en["ppl_lo"] < en["ppl"] < en["ppl_hi"]
    assert sw["windows"] == 1 and sw["tokens"] == 5 and sw["ppl_lo"] is None and sw["ppl_hi"] is None


TWO_RANK_SETS = {"en": 9, "sw": 4, "te": 1}


def _rank_worker(rank, world, port, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        res = evaluate(tiny_model(), valid_sets(TWO_RANK_SETS, rank, world))
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(res, f)


def test_two_processes_give_the_one_process_statistics(tmp_path):
    """Each rank scores its own windows (en: 5 + 4, rank 1 runs a padding batch; te: rank 1 has none); gathered,
    every rank reports the statistics of all windows, as one process does."""
    import torch.multiprocessing as mp

    mp.spawn(_rank_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    one = evaluate(tiny_model(), valid_sets(TWO_RANK_SETS))
    for rank in range(2):
        two = json.load(open(tmp_path / f"rank{rank}.json"))
        for lang in TWO_RANK_SETS:
            assert two[lang]["tokens"] == one[lang]["tokens"] and two[lang]["windows"] == one[lang]["windows"]
            for k in ("loss", "ppl", "ppl_lo", "ppl_hi"):
                want = one[lang][k] if one[lang][k] is None else pytest.approx(one[lang][k], rel=1e-6)
                assert two[lang][k] == want, (rank, lang, k)
    assert one["te"]["ppl_lo"] is None and one["en"]["ppl_lo"] is not None


# -------------------------------------------------------------------------------- warning and report
@contextlib.contextmanager
def negint_warnings():
    """Warnings of the ``negint_ds`` logger (the trainer clears its handlers and stops it propagating, so
    pytest's caplog would miss them): attach after building a trainer."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    log = logging.getLogger("negint_ds")
    log.addHandler(handler)
    try:
        yield records
    finally:
        log.removeHandler(handler)


def test_warning_for_a_tiny_valid_set_only():
    # The case: seq_len 32, one Telugu window → 5 masked tokens; English has 500 windows.
    res = evaluate(tiny_model(), valid_sets({"en": 500, "te": 1}, batch_size=64))
    assert res["te"]["tokens"] == 5 and res["en"]["tokens"] > 2000
    with negint_warnings() as warned:
        assert check_eval_sizes(res, 2000) == ["te"]
    assert [r.getMessage().split(":")[0] for r in warned] == ["te"]
    assert "only 5 masked tokens" in warned[0].getMessage()
    assert res["te"]["too_few_tokens"] and not res["en"]["too_few_tokens"]
    with negint_warnings() as warned:
        assert check_eval_sizes(res, 2000, warn=False) == ["te"]
    assert not warned


def test_final_table_shows_tokens_interval_and_marks_small_sets():
    res = {"en": {"loss": 2.0, "ppl": 7.389, "ppl_lo": 7.0, "ppl_hi": 7.9, "tokens": 12345, "windows": 512,
                  "too_few_tokens": False},
           "te": {"loss": 3.0, "ppl": 20.09, "ppl_lo": None, "ppl_hi": None, "tokens": 5, "windows": 1,
                  "too_few_tokens": True}}
    table = ppl_table(res, 40, first={"en": {"ppl": 100.0}, "te": {"ppl": 90.0}})
    assert "| language | valid ppl | 95% interval | masked tokens | windows | valid loss (nats) | ppl at first eval |" \
        in table
    assert "| en | 7.39 | 7.00–7.90 | 12,345 | 512 | 2.0000 | 100.00 |" in table
    assert "| te | 20.09 | – | 5 ‡ | 1 | 3.0000 | 90.00 |" in table
    assert "‡ fewer masked tokens than train.min_eval_tokens" in table
    # a resumed run's last evaluation, read back from older metrics, may lack the new fields
    old = ppl_table({"en": {"loss": 2.0, "ppl": 7.389}}, 40)
    assert "| en | 7.39 | – | – | – | 2.0000 |" in old and "‡" not in old


def test_curves_draw_with_interval_bands(tmp_path):
    recs = [{"step": s, "ppl_en": 10.0 / (s + 1), "ppl_lo_en": 9.0 / (s + 1), "ppl_hi_en": 11.0 / (s + 1)}
            for s in range(3)] + [{"step": 3, "ppl_en": 2.0, "ppl_lo_en": None, "ppl_hi_en": None}]
    assert plot_curves(recs, ["en"], str(tmp_path / "c.png"))
    assert os.path.getsize(tmp_path / "c.png") > 0


def test_trainer_records_and_warns_once(process_group, tiny_data, tmp_path):
    """The run's valid records carry tokens and the interval; the small-set warning comes once per language."""
    from negint_ds.train.setup import RunArgs, prepare_run
    from negint_ds.train.trainer import Trainer

    ds = write_ds_config(str(tmp_path / "ds.json"), stage=2)
    args = RunArgs(run_dir=str(tmp_path / "run"), config=tiny_data["recipe"], deepspeed_config=ds,
                   overrides=["train.max_steps=1"])
    t = Trainer(prepare_run(args, 1), rank=0, world_size=1, resume=False, overwrite=False, progress=False)
    with negint_warnings() as warned:
        first = t.run_eval()
        t.run_eval()
    small = sorted(r.getMessage().split(":")[0] for r in warned if "min_eval_tokens" in r.getMessage())
    assert small == ["en", "sw"]  # 16 windows of 32 tokens ≈ 80 masked tokens each, < 2000
    rec = t.metrics.records("valid")[-1]
    for lang in ("en", "sw"):
        assert rec[f"tokens_{lang}"] == first[lang]["tokens"] > 0
        assert rec[f"ppl_lo_{lang}"] < rec[f"ppl_{lang}"] < rec[f"ppl_hi_{lang}"]
    header = open(t.paths.valid_csv).readline().strip().split(",")
    assert {"tokens_en", "ppl_lo_sw", "ppl_hi_en"} <= set(header)
