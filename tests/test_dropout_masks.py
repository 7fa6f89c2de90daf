"""Dropout masks of a meta step: the virtual step, the probes and the θ step draw identical masks, whatever the
dtype (fp32 meta passes vs a bf16 θ step), the attention kernel and compilation."""
import math

import pytest
import torch
import torch.nn.functional as F

import negint_ds.model as model_mod
from negint_ds.config import AdapterConfig, ModelConfig
from negint_ds.model import attention_explicit_dropout, build_model, set_explicit_dropout

from test_meta_training import QUIET, trainer


DRAW = model_mod.draw_keep_mask


pytestmark = pytest.mark.usefixtures("process_group")  # in-process DeepSpeed trainers

def record_masks(monkeypatch, log):
    def spy(shape, p, device):
        mask = DRAW(shape, p, device)
        log.append(mask.clone())
        return mask

    monkeypatch.setattr(model_mod, "draw_keep_mask", spy)


def small(dropout=0.2):
    torch.manual_seed(0)
    cfg = ModelConfig(layers=2, dim=16, heads=2, ffn_dim=32, dropout=dropout, attention_dropout=dropout,
                      max_positions=8, adapters=AdapterConfig(kind="language", dropout=None))
    return build_model(cfg, 30, 2).train()


def test_explicit_masks_are_the_same_in_fp32_and_bf16(monkeypatch):
    m = small()
    # embedding; per layer: the residual dropout module (used twice), attention, 2 adapters x 2 languages
    assert set_explicit_dropout(m, True) == 1 + 2 * (1 + 1 + 2 * 2)
    ids, lang_ids = torch.randint(5, 30, (3, 8)), torch.zeros(3, dtype=torch.long)
    masks = {}
    for dtype in (torch.float32, torch.bfloat16):
        log = []
        record_masks(monkeypatch, log)
        torch.manual_seed(7)
        m.to(dtype).encoder(ids, lang_ids, lang=0)
        masks[dtype] = log
    a, b = masks[torch.float32], masks[torch.bfloat16]
    assert len(a) == 1 + 2 * 5 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not x.all() for x in a), "p = 0.2: some elements must be dropped"
    log = []
    record_masks(monkeypatch, log)
    set_explicit_dropout(m, False)
    m.float().encoder(ids, lang_ids, lang=0)
    assert log == [], "without explicit dropout the fused kernels draw the masks"


def test_explicit_attention_is_the_sdpa_formula_with_the_drawn_mask(monkeypatch):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    pad = torch.tensor([[True] * 5, [True, True, True, False, False]])[:, None, None, :]
    keep = torch.rand(2, 3, 5, 5, generator=g) >= 0.3
    monkeypatch.setattr(model_mod, "draw_keep_mask", lambda shape, p, device: keep)
    got = attention_explicit_dropout(q, k, v, pad, 0.3)
    scores = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(4) + torch.where(pad, 0.0, -math.inf)
    expect = torch.einsum("bhij,bhjd->bhid", torch.softmax(scores, -1) * keep / 0.7, v)
    torch.testing.assert_close(got, expect, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(model_mod, "draw_keep_mask", lambda shape, p, device: torch.ones(shape, dtype=torch.bool))
    torch.testing.assert_close(attention_explicit_dropout(q, k, v, pad, 0.3),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=pad) / 0.7, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode, passes", [("finite_difference", 4), ("exact", 3)])
def test_meta_step_and_theta_step_draw_identical_masks(tiny_data, tmp_path, monkeypatch, mode, passes):
    """Virtual step, probes (FD: θ⁺ and θ⁻; exact: the double-backward pass) and θ step, per micro-batch."""
    t = trainer(tiny_data, tmp_path, ["model.adapters.kind=language", "meta.enabled=true", f"meta.hypergradient={mode}",
                                      "meta.val_batch_size=8", "meta.val_micro_batch=4", "model.dropout=0.1",
                                      "model.attention_dropout=0.1"])
    assert t.explicit_dropout
    runs, seed = [], t.seed_dropout

    def seeded(step, phase, lang, micro):
        runs.append(((phase, lang, micro), []))
        seed(step, phase, lang, micro)

    monkeypatch.setattr(t, "seed_dropout", seeded)

    def spy(shape, p, device):
        mask = DRAW(shape, p, device)
        runs[-1][1].append(mask.clone())
        return mask

    monkeypatch.setattr(model_mod, "draw_keep_mask", spy)
    lang, _, batches = t.train_step(0)
    train = [masks for key, masks in runs if key[0] == "train"]
    assert len(train) == passes * len(batches), [key for key, _ in runs]
    first = train[0]
    assert len(first) == 1 + 2 * 3 and any(not m.all() for m in first)
    for other in train[1:]:
        assert len(other) == len(first) and all(torch.equal(a, b) for a, b in zip(first, other))
    val = [masks for key, masks in runs if key[0] == "val"]
    assert val and not all(torch.equal(a, b) for a, b in zip(val[0], first)), "validation draws its own masks"


def test_compiled_runs_use_the_eager_random_stream(tiny_data, tmp_path):
    import torch._inductor.config as inductor_config

    before = inductor_config.fallback_random
    try:
        inductor_config.fallback_random = False
        trainer(tiny_data, tmp_path, ["model.adapters.kind=language", "meta.enabled=true", "train.compile=true",
                                      *QUIET])
        assert inductor_config.fallback_random, "a compiled meta run must draw dropout masks as eager code does"
    finally:
        inductor_config.fallback_random = before


@pytest.mark.slow
def test_compiled_model_draws_the_eager_masks():
    """What the setting buys (compiles on CPU: slow): with it, a compiled forward equals the eager one."""
    import torch._inductor.config as inductor_config

    from negint_ds.train.compiling import eager_rng_in_compiled_graphs

    m = small(0.3)
    set_explicit_dropout(m, True)
    ids, lang_ids = torch.randint(5, 30, (3, 8)), torch.zeros(3, dtype=torch.long)
    pos, tgt = torch.tensor([1, 5, 9]), torch.tensor([7, 8, 9])
    torch.manual_seed(1)
    eager = m(ids, lang_ids, pos, tgt, lang=0)
    before = inductor_config.fallback_random
    try:
        eager_rng_in_compiled_graphs()
        compiled = torch.compile(m)
        torch.manual_seed(1)
        out = compiled(ids, lang_ids, pos, tgt, lang=0)
    finally:
        inductor_config.fallback_random = before
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    torch.manual_seed(2)
    assert not torch.allclose(m(ids, lang_ids, pos, tgt, lang=0), eager), "another seed, other masks"
