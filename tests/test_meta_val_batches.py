"""Meta-validation batches: identical across world sizes, unbiased language subsets, deterministic."""
import numpy as np
import pytest
import torch

from negint_ds.config import MLMConfig
from negint_ds.data.batches import DataError
from negint_ds.data.binarized import open_binarized, write_binarized
from negint_ds.meta.val_batches import MetaValBatches


@pytest.fixture
def streams(tmp_path):
    rng = np.random.default_rng(0)
    out = []
    for i in range(4):
        sents = [list(rng.integers(5, 100, size=rng.integers(3, 12))) for _ in range(120)]
        p = str(tmp_path / f"l{i}.bin")
        write_binarized(p, sents, 3, 100, "a" * 64, f"l{i}", "valid")
        out.append(open_binarized(p))
    return out


def make(streams, world, rank, val=8, micro=2, seed=0):
    return MetaValBatches(streams, "valid", 16, val, micro, world, rank, MLMConfig(), 100, 4, 5, seed)


def test_two_ranks_split_the_same_global_batch(streams):
    one = make(streams, 1, 0)
    two = [make(streams, 2, r) for r in range(2)]
    for step in (0, 3):
        for lang in range(4):
            single = one.batches(step, lang)
            split = [b for r in range(2) for b in two[r].batches(step, lang)]
            key = lambda b: b.input_ids.tolist()  # noqa: E731
            assert sorted(map(key, single)) == sorted(map(key, split))
            assert all(bool((b.lang_ids == lang).all()) for b in single)
    assert not torch.equal(one.batches(0, 1)[0].input_ids, one.batches(1, 1)[0].input_ids), "batches must advance"


def test_language_subsets_are_uniform_and_agree_across_ranks(streams):
    a, b = make(streams, 2, 0), make(streams, 2, 1)
    counts = np.zeros(4)
    for step in range(3000):
        s = a.languages(step, lang=0, include_self=False, k=2)
        assert s == b.languages(step, lang=0, include_self=False, k=2)
        assert len(s) == 2 and 0 not in s
        counts[s] += 1
    # each of the 3 candidates is in S with probability 2/3: sd of the frequency ≈ 0.0086 at n=3000
    assert np.all(np.abs(counts[1:] / 3000 - 2 / 3) < 0.045) and counts[0] == 0
    assert a.languages(5, lang=2, include_self=True, k=None) == [0, 1, 2, 3]
    assert a.languages(5, lang=2, include_self=False, k=None) == [0, 1, 3]


def test_bad_layouts_are_refused(streams):
    with pytest.raises(DataError, match="multiple of the validation micro-batch"):
        make(streams, 2, 0, val=6, micro=2)
    one_lang = MetaValBatches(streams[:1], "valid", 16, 4, 2, 1, 0, MLMConfig(), 100, 4, 5, 0)
    with pytest.raises(DataError, match="validation sum is empty"):
        one_lang.languages(0, 0, include_self=False, k=None)
