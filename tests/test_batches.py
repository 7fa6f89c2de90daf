"""Batches: every rank reads its own shard, world sizes agree, resume replays exactly, eval is fixed."""
import numpy as np
import pytest
import torch

from negint_ds.config import MLMConfig
from negint_ds.data.batches import DataError, TrainBatches, WindowSampler, eval_batches
from negint_ds.data.binarized import open_binarized, write_binarized
from negint_ds.data.sampling import LanguageSchedule, language_probs


@pytest.fixture
def streams(tmp_path):
    rng = np.random.default_rng(0)
    out = []
    for lang, n in (("en", 400), ("sw", 150)):
        sents = [list(rng.integers(5, 100, size=rng.integers(3, 12))) for _ in range(n)]
        p = str(tmp_path / f"{lang}.bin")
        write_binarized(p, sents, 3, 100, "a" * 64, lang, "train")
        out.append(open_binarized(p))
    return out


def make(streams, world, rank, micro, accum, start=0, seed=0):
    sched = LanguageSchedule(language_probs([400, 150], 1.0), seed)
    return TrainBatches(streams, sched, 16, micro, accum, world, rank, MLMConfig(), 100, 4, 5, seed, start)


def flatten(step_batches):
    return [(b.input_ids, b.pred_positions, b.targets, b.lang_ids) for b in step_batches]


def test_one_process_with_accumulation_equals_two_ranks(streams):
    single = make(streams, 1, 0, 4, 2)
    r0, r1 = make(streams, 2, 0, 4, 1), make(streams, 2, 1, 4, 1)
    for step in range(30):
        l, s = single.step(step)
        l0, b0 = r0.step(step)
        l1, b1 = r1.step(step)
        assert l == l0 == l1, "ranks must draw the same language"
        for x, y in zip(flatten(s), flatten(b0 + b1)):
            assert all(torch.equal(a, b) for a, b in zip(x, y))
        assert not torch.equal(b0[0].input_ids, b1[0].input_ids), "ranks must read different shards"


def test_resume_continues_the_same_batches(streams):
    full = make(streams, 1, 0, 3, 1)
    seq = [full.step(t) for t in range(40)]
    resumed = make(streams, 1, 0, 3, 1, start=25)
    for t in range(25, 40):
        l, b = resumed.step(t)
        assert l == seq[t][0] and torch.equal(b[0].input_ids, seq[t][1][0].input_ids)
    with pytest.raises(ValueError, match="out of order"):
        resumed.step(3)


def test_windows_cover_each_epoch_once(streams):
    ws = WindowSampler(streams[1], 16, seed=0, lang_index=1)
    n = ws.n
    starts = set()
    tok = np.asarray(streams[1].tokens)
    epoch0 = ws.windows(0, n)
    for w in epoch0:
        matches = [i for i in range(len(tok) - 15) if np.array_equal(tok[i:i + 16], w)]
        starts.add(matches[0])
    assert len(starts) == n, "an epoch must visit n distinct windows"
    assert not np.array_equal(ws.windows(n, n), epoch0), "the next epoch must be reshuffled"


def test_too_little_text_is_reported(streams):
    with pytest.raises(DataError, match="too few for seq_len=4096"):
        WindowSampler(streams[1], 4096, 0, 0)


def test_eval_batches_do_not_depend_on_world_size_or_batch_size(streams):
    args = dict(stream=streams[0], lang_index=0, seq_len=16, max_sequences=None, mlm=MLMConfig(), vocab_size=100,
                mask_id=4, n_special=5, seed=1)
    one = eval_batches(batch_size=1000, rank=0, world_size=1, **args)
    assert len(one) == 1 and one[0][1]
    parts = [eval_batches(batch_size=3, rank=r, world_size=3, **args) for r in range(3)]
    assert len({len(p) for p in parts}) == 1, "all ranks need the same number of eval batches (ZeRO-3)"
    got = sorted(int(t) for p in parts for b, counts in p if counts for t in b.targets)
    assert got == sorted(int(t) for t in one[0][0].targets)
    assert torch.equal(eval_batches(batch_size=1000, rank=0, world_size=1, **args)[0][0].input_ids,
                       one[0][0].input_ids)
    # more ranks than windows: the extra ranks still get a (padding) batch to run, scored as nothing
    n = streams[0].num_tokens // 16
    many = [eval_batches(batch_size=2, rank=r, world_size=n + 3, **args) for r in range(n + 3)]
    assert all(len(p) == 1 for p in many) and [p[0][1] for p in many[n:]] == [False] * 3
