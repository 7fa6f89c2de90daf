"""XLM masking: 15% of eligible tokens predicted, 80/10/10 mask/random/keep, specials never touched."""
import pytest
import torch

from negint_ds.config import MLMConfig
from negint_ds.mlm import mask_tokens

V, MASK, NSPEC = 1000, 4, 5


def sample_tokens(B, L, g):
    t = torch.randint(NSPEC, V, (B, L), generator=g)
    t[:, ::9] = 3  # </s> separators
    t[0, :5] = 0  # some padding
    return t


def test_counts_and_fractions():
    g = torch.Generator().manual_seed(0)
    cfg = MLMConfig()
    tok = sample_tokens(64, 256, g)
    elig = int((tok >= NSPEC).sum())
    ids, pos, tgt = mask_tokens(tok, cfg, V, MASK, NSPEC, g)
    assert pos.numel() == round(0.15 * elig)
    assert torch.equal(tgt, tok.view(-1)[pos])
    assert bool((tok.view(-1)[pos] >= NSPEC).all()), "a special token was chosen for prediction"
    unchanged = torch.ones(tok.numel(), dtype=torch.bool)
    unchanged[pos] = False
    assert torch.equal(ids.view(-1)[unchanged], tok.view(-1)[unchanged]), "non-predicted tokens must be untouched"
    new = ids.view(-1)[pos]
    n = pos.numel()
    frac_mask = (new == MASK).float().mean().item()
    frac_keep = (new == tgt).float().mean().item()
    frac_rand = 1 - frac_mask - frac_keep
    # n ≈ 2200: binomial sd ≈ 0.0085 for 0.8 and 0.0064 for 0.1; allow 5 sd. A random draw can equal the
    # original (prob 1/995), which moves ~0.01% from random to keep: far inside the tolerance.
    assert abs(frac_mask - 0.8) < 0.043 and abs(frac_keep - 0.1) < 0.032 and abs(frac_rand - 0.1) < 0.032, n
    assert bool(((new >= NSPEC) | (new == MASK)).all()), "random replacement drew a special id"


def test_positions_are_uniform_over_eligible_tokens():
    g = torch.Generator().manual_seed(1)
    tok = torch.full((1, 100), 7)
    tok[0, :20] = 3
    hits = torch.zeros(100)
    for _ in range(2000):
        _, pos, _ = mask_tokens(tok, MLMConfig(), V, MASK, NSPEC, g)
        hits[pos] += 1
    assert hits[:20].sum() == 0
    rate = hits[20:] / 2000  # expected 12/80 = 0.15 each; sd = sqrt(.15*.85/2000) ≈ 0.008
    assert (rate - 0.15).abs().max() < 0.04


def test_deterministic_given_generator_and_respects_config():
    tok = sample_tokens(4, 64, torch.Generator().manual_seed(2))
    a = mask_tokens(tok, MLMConfig(), V, MASK, NSPEC, torch.Generator().manual_seed(5))
    b = mask_tokens(tok, MLMConfig(), V, MASK, NSPEC, torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    ids, pos, tgt = mask_tokens(tok, MLMConfig(mask_prob=0.5, mask_frac=1.0, random_frac=0.0, keep_frac=0.0), V,
                                MASK, NSPEC, torch.Generator().manual_seed(5))
    assert pos.numel() == round(0.5 * int((tok >= NSPEC).sum()))
    assert bool((ids.view(-1)[pos] == MASK).all())


def test_batch_of_only_special_tokens_predicts_nothing():
    ids, pos, tgt = mask_tokens(torch.full((2, 8), 3), MLMConfig(), V, MASK, NSPEC, torch.Generator())
    assert pos.numel() == 0 and tgt.numel() == 0


@pytest.mark.parametrize("bad", [dict(mask_prob=0.0), dict(mask_frac=0.5)])
def test_config_validation(bad):
    from negint_ds.config import ConfigError, from_mapping

    with pytest.raises(ConfigError):
        from_mapping(MLMConfig, bad)
