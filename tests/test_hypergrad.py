"""Hypergradients of φ_i (Algorithm 1): finite differences (Eq. 8) vs exact second order vs brute force, float64."""
import pytest
import torch

from negint_ds.config import AdapterConfig, MLMConfig, ModelConfig
from negint_ds.meta import MetaInputs, hypergradient_exact, hypergradient_fd, meta_objective
from negint_ds.mlm import MLMBatch, mask_tokens
from negint_ds.model import build_model
from negint_ds.params import split_parameters

V, N_LANGS, L = 40, 3, 12


def batch(lang, rows, seed):
    g = torch.Generator().manual_seed(seed)
    tok = torch.randint(5, V, (rows, L), generator=g)
    ids, pos, tgt = mask_tokens(tok, MLMConfig(mask_prob=0.3), V, 4, 5, g)
    return MLMBatch(ids, torch.full((rows,), lang), pos, tgt)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    cfg = ModelConfig(layers=2, dim=16, heads=2, ffn_dim=32, dropout=0.0, attention_dropout=0.0, max_positions=L,
                      adapters=AdapterConfig(kind="language", bottleneck=4))
    model = build_model(cfg, V, N_LANGS).double()
    split = split_parameters(model, N_LANGS)
    lang = 1
    inputs = MetaInputs(train=[batch(lang, 3, 1), batch(lang, 3, 2)],
                        val=[(j, [batch(j, 2, 10 + j)]) for j in range(N_LANGS)])
    return model, list(split.theta), split.phi_names(lang), lang, inputs


def flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def test_exact_matches_brute_force(setup):
    model, th, ph, lang, inputs = setup
    beta = 0.5
    exact = flat(hypergradient_exact(model, th, ph, lang, inputs, beta).grad)
    params = dict(model.named_parameters())
    phi = [params[n].detach() for n in ph]
    torch.manual_seed(3)
    for _ in range(3):
        u = [torch.randn_like(p) for p in phi]
        delta = 1e-5
        fp = meta_objective(model, th, ph, [p + delta * d for p, d in zip(phi, u)], lang, inputs, beta)
        fm = meta_objective(model, th, ph, [p - delta * d for p, d in zip(phi, u)], lang, inputs, beta)
        numeric = (fp - fm) / (2 * delta)
        analytic = float(exact @ flat(u))
        assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-10)


def test_finite_difference_matches_exact(setup):
    model, th, ph, lang, inputs = setup
    beta = 0.5
    exact = flat(hypergradient_exact(model, th, ph, lang, inputs, beta).grad)
    no_curvature = flat(hypergradient_exact(model, th, ph, lang, inputs, 0.0).grad)
    assert (exact - no_curvature).norm() / exact.norm() > 0.05, "β too small: the test would not see Eq. 4's term"
    fd = hypergradient_fd(model, th, ph, lang, inputs, beta, fd_scale=1e-4)
    rel = float((flat(fd.grad) - exact).norm() / exact.norm())
    assert rel <= 1e-4, rel
    assert fd.eps == pytest.approx(1e-4 / fd.v_norm)
    # central differences are second order: a 10x larger step gives a ~100x larger (still small) error
    coarse = hypergradient_fd(model, th, ph, lang, inputs, beta, fd_scale=1e-2)
    rel_coarse = float((flat(coarse.grad) - exact).norm() / exact.norm())
    assert rel < rel_coarse < 1e-1


def test_probes_leave_theta_and_other_languages_bit_identical(setup):
    model, th, ph, lang, inputs = setup
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hypergradient_fd(model, th, ph, lang, inputs, 0.5, fd_scale=1e-2)
    hypergradient_exact(model, th, ph, lang, inputs, 0.5)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_loss_scale_is_removed(setup):
    model, th, ph, lang, inputs = setup
    a = hypergradient_fd(model, th, ph, lang, inputs, 0.5, fd_scale=1e-3)
    b = hypergradient_fd(model, th, ph, lang, inputs, 0.5, fd_scale=1e-3, scale=1024.0)
    torch.testing.assert_close(flat(b.grad), flat(a.grad), rtol=1e-9, atol=1e-12)
    assert b.v_norm == pytest.approx(a.v_norm) and b.eps == pytest.approx(a.eps)
    c = hypergradient_exact(model, th, ph, lang, inputs, 0.5, scale=1024.0)
    torch.testing.assert_close(flat(c.grad), flat(hypergradient_exact(model, th, ph, lang, inputs, 0.5).grad),
                               rtol=1e-9, atol=1e-12)
