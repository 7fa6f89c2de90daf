"""The meta-validation micro-batch is derived so that every shipped layout works (the GPU configs' 128-sequence
micro-batch with the paper's 64 validation sequences crashed every meta run at start-up before)."""
import pytest

from negint_ds.meta.val_batches import resolve_val_micro


@pytest.mark.parametrize("val, micro_cfg, train_micro, world, expect", [
    (64, None, 128, 1, 64),   # gpu_*.json on one GPU: was refused ("multiple of ... (128)")
    (64, None, 128, 8, 8),    # eight GPUs: 8 per rank
    (64, None, 32, 1, 32),    # cpu_*.json: the train micro-batch, as before
    (32, None, 32, 2, 16),
    (48, None, 32, 1, 16),    # the largest divisor of 48 not above 32
    (64, 16, 128, 2, 16),     # explicit value kept
])
def test_derived_micro_divides_the_per_rank_share(val, micro_cfg, train_micro, world, expect):
    micro, problems = resolve_val_micro(val, micro_cfg, train_micro, world)
    assert problems == [] and micro == expect
    assert (val // world) % micro == 0 and micro <= max(train_micro, micro_cfg or 0)


def test_impossible_layouts_are_named():
    _, problems = resolve_val_micro(64, None, 128, 3)
    assert len(problems) == 1 and "meta.val_batch_size=64 is not a multiple of the world size (3)" in problems[0]
    _, problems = resolve_val_micro(6, 4, 4, 1)
    assert len(problems) == 1 and "meta.val_micro_batch (4)" in problems[0]
