"""PLL bits per character: brute-force reference, masking pattern, batching, windows, runs, bad input."""
import csv
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import free_port
from negint_ds.analysis.pll import (PLLError, bpc_table, masked_rows, pll_scores, read_sentences, score_run,
                                    summarize, text_sha256, word_starts)
from negint_ds.analysis.pretrained import AnalysisError, load_pretrained
from negint_ds.data.vocab import EOS_ID

MASK = 4  # <mask> id of every negint_ds vocabulary (checked in reference_pll)


@pytest.fixture(scope="module")
def run(tiny_run):
    """A finished tiny run (export/ written): 12 steps of the tiny recipe (max_positions 32)."""
    return tiny_run["run"]


@pytest.fixture(scope="module")
def pre(run):
    return load_pretrained(run)


def reference_pll(model, vocab, sentence: str, lang: int, variant: str) -> float:
    """Plain PLL: for each piece, copy the sentence + </s>, mask the piece (and, for word_l2r, the rest of its word),
    cut the documented centred window if too long, forward that one copy, and add log-softmax at the target."""
    assert vocab.mask_id == MASK
    ids = vocab.encode([sentence])[0]
    pieces = [vocab.sp.id_to_piece(i) for i in ids]
    seq = ids + [EOS_ID]
    M = model.encoder.pos_emb.num_embeddings
    total = 0.0
    with torch.no_grad():
        for t in range(len(ids)):
            copy = list(seq)
            copy[t] = MASK
            if variant == "word_l2r":
                j = t + 1
                while j < len(ids) and not pieces[j].startswith("\u2581"):
                    copy[j] = MASK
                    j += 1
            s = 0
            if len(seq) > M:
                s = min(max(t - M // 2, 0), len(seq) - M)
            window = copy[s:s + M]
            h = model.encoder(torch.tensor([window]), torch.tensor([lang]), None, lang)  # (1, L, d)
            logits = h[0, t - s] @ model.encoder.tok_emb.weight.T + model.out_bias
            total += float(F.log_softmax(logits.double(), -1)[ids[t]])
    return total


def multi_piece_sentences(pre, lang: str, k: int) -> list[str]:
    """The first k validation sentences that contain a word of 3+ pieces (so l2r differs from original)."""
    out = []
    for s in read_sentences(pre.text_path(lang, "valid")):
        starts = word_starts(pre.vocab, pre.vocab.encode([s])[0])
        runs = np.diff(np.flatnonzero(np.append(starts, True)))
        if runs.max(initial=0) >= 3:
            out.append(s)
        if len(out) == k:
            return out
    raise AssertionError("no validation sentence with a 3-piece word")


def test_masking_pattern_of_l2r_and_original():
    ids = [10, 11, 12, 13, 14]
    starts = [True, False, False, True, False]  # words: [10 11 12] [13 14]
    rows, pos, tgt = masked_rows(ids, starts, "word_l2r", 32, MASK)
    E, M = EOS_ID, MASK
    assert rows.tolist() == [[M, M, M, 13, 14, E],   # piece 0: it and its right siblings 1, 2
                             [10, M, M, 13, 14, E],  # piece 1: left sibling 0 stays visible
                             [10, 11, M, 13, 14, E],
                             [10, 11, 12, M, M, E],
                             [10, 11, 12, 13, M, E]]
    assert pos.tolist() == [0, 1, 2, 3, 4] and tgt.tolist() == ids
    rows, _, _ = masked_rows(ids, starts, "original", 32, MASK)
    assert rows.tolist() == [[M if j == t else x for j, x in enumerate(ids + [E])] for t in range(5)]
    with pytest.raises(PLLError, match="variant 'l2r' unknown"):
        masked_rows(ids, starts, "l2r", 32, MASK)


def test_windows_for_a_long_sentence_are_centred_and_every_piece_is_scored():
    n, M = 10, 6
    ids = list(range(20, 20 + n))
    rows, pos, tgt = masked_rows(ids, [True] * n, "original", M, MASK)
    seq = ids + [EOS_ID]
    assert rows.shape == (n, M) and tgt.tolist() == ids
    for t in range(n):
        s = min(max(t - M // 2, 0), n + 1 - M)
        assert rows[t].tolist() == [MASK if s + j == t else seq[s + j] for j in range(M)]
        assert pos[t] == t - s
    assert rows[-1, -1] == EOS_ID and rows[0, 0] == MASK  # </s> only in windows that reach the end


@pytest.mark.parametrize("variant", ["word_l2r", "original"])
def test_pll_equals_brute_force_reference(pre, variant):
    sents = multi_piece_sentences(pre, "sw", 3)
    got = pll_scores(pre.model, pre.vocab, sents, pre.lang_index("sw"), variant=variant, batch_size=16,
                     progress=False)
    ref = [reference_pll(pre.model, pre.vocab, s, pre.lang_index("sw"), variant) for s in sents]
    assert got["sentence_nats"] == pytest.approx(ref, rel=1e-5, abs=1e-5)
    assert got["nats"] == pytest.approx(sum(ref), rel=1e-5)
    assert got["pieces"] == sum(len(pre.vocab.encode([s])[0]) for s in sents)  # </s> not scored
    assert got["truncated"] == 0 and got["variant"] == variant


def test_variants_differ_on_multi_piece_words(pre):
    sents = multi_piece_sentences(pre, "en", 2)
    a = pll_scores(pre.model, pre.vocab, sents, 0, variant="word_l2r", progress=False)
    b = pll_scores(pre.model, pre.vocab, sents, 0, variant="original", progress=False)
    # hiding the right siblings must cost likelihood: the original variant sees them
    assert a["nats"] < b["nats"] - 1e-3


def test_batching_does_not_change_the_result(pre):
    sents = read_sentences(pre.text_path("en", "valid"), 8)
    lens = {len(e) for e in pre.vocab.encode(sents)}
    assert len(lens) > 1, "need sentences of different lengths to exercise padding"
    res = [pll_scores(pre.model, pre.vocab, sents, 0, batch_size=b, progress=False) for b in (1, 7, 4096)]
    for r in res[1:]:
        assert r["sentence_nats"] == pytest.approx(res[0]["sentence_nats"], rel=1e-5, abs=1e-5)
        assert {k: r[k] for k in ("chars", "words", "pieces")} == {k: res[0][k] for k in ("chars", "words", "pieces")}


def test_long_sentence_is_scored_in_documented_windows(pre):
    text = read_sentences(pre.text_path("sw", "valid"))
    long = " ".join(text[:8])
    n = len(pre.vocab.encode([long])[0])
    M = pre.model.encoder.pos_emb.num_embeddings
    assert n > M - 1, f"test sentence has only {n} pieces"
    short = text[8]
    got = pll_scores(pre.model, pre.vocab, [short, long], 1, batch_size=13, progress=False)
    assert got["truncated"] == 1 and got["pieces"] == n + len(pre.vocab.encode([short])[0])
    assert got["sentence_nats"][1] == pytest.approx(reference_pll(pre.model, pre.vocab, long, 1, "word_l2r"),
                                                    rel=1e-5)
    assert got["chars"] == len(short) + len(long)  # no character dropped from the denominator


def test_bpc_is_nats_over_ln2_chars():
    s = summarize(-7 * math.log(2), 7, 2)
    assert s["bpc"] == pytest.approx(1.0, rel=1e-15)
    assert s["pppl_word"] == pytest.approx(2 ** 3.5, rel=1e-12)
    assert math.isnan(summarize(0.0, 0, 0)["bpc"])


def test_counts_on_a_hand_written_example(pre):
    sents = ["Kato rine.", "Mi  ka ñe"]  # 10 + 9 characters (ñ is one, the double space two); 2 + 3 words
    got = pll_scores(pre.model, pre.vocab, sents, 0, progress=False)
    assert (got["chars"], got["words"], got["sentences"]) == (19, 5, 2)
    assert got["nats"] < 0
    assert got["bpc"] == pytest.approx(-got["nats"] / (math.log(2) * 19), rel=1e-12)
    assert got["pppl_word"] == pytest.approx(math.exp(-got["nats"] / 5), rel=1e-12)


def test_denominator_does_not_depend_on_the_vocabulary(pre, tiny_data, tmp_path):
    """Two segmentations of the same text (the run's 300-piece vocabulary and a 120-piece one trained here):
    different pieces, the same characters and words, so bpc totals are over the same text."""
    from negint_ds.config import ModelConfig
    from negint_ds.data.vocab import train_vocabulary
    from negint_ds.model import build_model

    train = {l: read_sentences(os.path.join(tiny_data["data_dir"], "text", f"{l}.train.txt")) for l in ("en", "sw")}
    small = train_vocabulary(train, str(tmp_path / "small"), size=120, sample_sentences=3000)
    assert small.size != pre.vocab.size
    torch.manual_seed(0)
    model = build_model(ModelConfig(layers=1, dim=16, heads=2, ffn_dim=32, max_positions=32, dropout=0.0,
                                    attention_dropout=0.0), small.size, 2)
    sents = read_sentences(pre.text_path("sw", "valid"), 10)
    a = pll_scores(pre.model, pre.vocab, sents, 1, progress=False)
    b = pll_scores(model, small, sents, 1, progress=False)
    assert b["pieces"] > a["pieces"]  # the small vocabulary segments more finely
    assert a["chars"] == b["chars"] == sum(len(s) for s in sents)
    assert a["words"] == b["words"] == sum(len(s.split()) for s in sents)
    for r in (a, b):
        assert r["bpc"] * math.log(2) * r["chars"] == pytest.approx(-r["nats"], rel=1e-12)


def test_score_run_takes_the_first_sentences(pre):
    r = score_run(pre, "sw", max_sentences=15, progress=False)
    first = read_sentences(pre.text_path("sw", "valid"))[:15]
    assert r["sentences"] == 15 and r["text_sha256"] == text_sha256(first)
    again = pll_scores(pre.model, pre.vocab, first, pre.lang_index("sw"), progress=False)
    assert r["nats"] == again["nats"] and r["lang"] == "sw" and r["split"] == "valid"


def test_bpc_table_writes_bpc_beside_validation_perplexity(run, tmp_path):
    out = str(tmp_path / "bpc")
    rows = bpc_table([run, run], max_sentences=6, out_dir=out, progress=False)
    assert [(r["lang"]) for r in rows] == ["en", "sw", "en", "sw"]
    final = json.load(open(os.path.join(run, "final_ppl.json")))
    for r in rows:
        assert r["valid_ppl"] == final["valid"][r["lang"]]["ppl"] and r["valid_ppl_step"] == final["step"]
        assert r["sentences"] == 6 and r["bpc"] > 0
    assert rows[0]["bpc"] == rows[2]["bpc"]  # the same model on the same text
    with open(os.path.join(out, "bpc.csv"), encoding="utf-8") as f:
        got = list(csv.DictReader(f))
    assert len(got) == 4 and float(got[1]["bpc"]) == rows[1]["bpc"] and float(got[1]["valid_ppl"]) == rows[1]["valid_ppl"]
    assert int(got[1]["chars"]) == rows[1]["chars"]
    md = open(os.path.join(out, "bpc.md"), encoding="utf-8").read()
    assert "| tiny | sw | " in md and "valid ppl / piece" in md and "†" not in md


def test_bad_input_is_refused(pre, run, tmp_path):
    with pytest.raises(AnalysisError, match="'fr' is not a language"):
        score_run(pre, "fr", progress=False)
    with pytest.raises(AnalysisError, match=r"\['fr'\] are not languages of the model"):
        bpc_table([run], langs=["en", "fr"], out_dir=str(tmp_path), progress=False)
    assert not os.path.exists(os.path.join(tmp_path, "bpc.csv"))
    with pytest.raises(AnalysisError, match="no config.yaml"):
        bpc_table([str(tmp_path)], progress=False)
    with pytest.raises(PLLError, match="variant"):
        pll_scores(pre.model, pre.vocab, ["a"], 0, variant="l2r")
    with pytest.raises(PLLError, match="newline"):
        pll_scores(pre.model, pre.vocab, ["a\nb"], 0)
    with pytest.raises(PLLError, match="batch_size"):
        pll_scores(pre.model, pre.vocab, ["a"], 0, batch_size=0)
    with pytest.raises(ValueError, match="language id 5 is out of range"):
        pll_scores(pre.model, pre.vocab, ["a"], 5, progress=False)


def _dp_worker(rank: int, port: int, run_dir: str, sents: list[str], out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        p = load_pretrained(run_dir)
        r = pll_scores(p.model, p.vocab, sents, 1, batch_size=8, progress=False)
        with open(f"{out}.{rank}.json", "w") as f:
            json.dump(r, f)
    finally:
        dist.destroy_process_group()


def test_data_parallel_matches_one_process(pre, run, tmp_path):
    import torch.multiprocessing as mp

    sents = read_sentences(pre.text_path("sw", "valid"), 9)
    one = pll_scores(pre.model, pre.vocab, sents, 1, batch_size=8, progress=False)
    out = str(tmp_path / "dp")
    mp.spawn(_dp_worker, args=(free_port(), run, sents, out), nprocs=2, join=True)
    for rank in (0, 1):
        r = json.load(open(f"{out}.{rank}.json"))
        assert r["sentence_nats"] == pytest.approx(one["sentence_nats"], rel=1e-5, abs=1e-5)
        assert r["nats"] == pytest.approx(one["nats"], rel=1e-6) and r["chars"] == one["chars"]
