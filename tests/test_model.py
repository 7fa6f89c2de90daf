"""Model shapes, the sparse MLM head against a dense reference, attention against a hand-written one."""
import math

import pytest
import torch
import torch.nn.functional as F

from negint_ds.config import ModelConfig
from negint_ds.model import build_model, count_parameters, flops_per_token

CFG = ModelConfig(layers=2, dim=32, heads=4, ffn_dim=64, dropout=0.0, attention_dropout=0.0, max_positions=16)


def make(cfg=CFG, V=50, n_langs=3):
    torch.manual_seed(0)
    return build_model(cfg, V, n_langs).double().eval()


def test_shapes_and_tied_weights():
    m = make()
    x = torch.randint(5, 50, (3, 16))
    h = m.encoder(x, torch.tensor([0, 1, 2]))
    assert h.shape == (3, 16, 32) and h.dtype == torch.float64
    assert m.logits_at(h, torch.tensor([0, 17, 47])).shape == (3, 50)
    names = [n for n, _ in m.named_parameters()]
    assert not any("head" in n or "proj" in n for n in names), "output projection must be tied, not separate"
    d, f, V, P = 32, 64, 50, 16
    per_layer = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d
    expect = V * d + P * d + 3 * d + 2 * d + 2 * per_layer + V
    assert count_parameters(m) == expect


def test_sparse_head_equals_dense_reference():
    m = make()
    B, L = 4, 16
    x = torch.randint(5, 50, (B, L))
    lang = torch.tensor([0, 2, 1, 0])
    pos = torch.tensor([1, 5, 16, 33, 40, 63])
    tgt = torch.randint(5, 50, (pos.numel(),))
    loss = m(x, lang, pos, tgt)
    h = m.encoder(x, lang)
    dense = h @ m.encoder.tok_emb.weight.T + m.out_bias  # (B, L, V): every position projected
    ref = F.cross_entropy(dense.reshape(B * L, -1)[pos], tgt)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    # gradients agree too
    g1 = torch.autograd.grad(loss, m.encoder.tok_emb.weight)[0]
    h = m.encoder(x, lang)
    dense = h @ m.encoder.tok_emb.weight.T + m.out_bias
    g2 = torch.autograd.grad(F.cross_entropy(dense.reshape(B * L, -1)[pos], tgt), m.encoder.tok_emb.weight)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


def test_attention_matches_hand_written_softmax_attention():
    m = make()
    attn = m.encoder.layers[0].attn
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    y = attn(x, pad)
    q, k, v = attn.qkv(x).view(2, 7, 3, 4, 8).permute(2, 0, 3, 1, 4)
    s = q @ k.transpose(-1, -2) / math.sqrt(8)
    s = s.masked_fill(pad[:, None, None, :], float("-inf"))
    ref = attn.out((s.softmax(-1) @ v).transpose(1, 2).reshape(2, 7, 32))
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-12)


def test_padding_does_not_change_real_positions_and_language_embedding_matters():
    m = make()
    x = torch.randint(5, 50, (1, 10))
    lang = torch.tensor([1])
    h = m.encoder(x, lang)
    xp = torch.cat([x, torch.zeros(1, 6, dtype=torch.long)], 1)
    pad = torch.zeros(1, 16, dtype=torch.bool)
    pad[0, 10:] = True
    hp = m.encoder(xp, lang, pad)
    torch.testing.assert_close(hp[:, :10], h, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(m.encoder(x, torch.tensor([2])), h), "language embedding has no effect"


def test_errors_name_the_problem():
    m = make()
    with pytest.raises(ValueError, match="max_positions=16"):
        m.encoder(torch.randint(5, 50, (1, 17)), torch.tensor([0]))
    with pytest.raises(ValueError, match="vocab_size=10 but the prepared vocabulary has 50"):
        build_model(ModelConfig(vocab_size=10), 50, 2)


def test_flops_per_token_counts_matmuls():
    cfg = ModelConfig(layers=1, dim=4, heads=1, ffn_dim=8)
    # 3 * (2*(4*16 + 2*4*8) + 4*L*d + 0.15*2*d*V) with L=2, V=10
    assert flops_per_token(cfg, 2, 10, 0.15) == pytest.approx(3 * (2 * (64 + 64) + 32 + 12))
