"""Hypergradients of φ_i (Algorithm 1, Eq. 3, 4, 8) in float64: exact vs brute force, finite differences vs exact
(central second order, forward first order), the direct / second-order split, and what the probes leave behind."""
import pytest
import torch

from negint_ds.config import AdapterConfig, MLMConfig, ModelConfig
from negint_ds.meta import MetaInputs, MetaParams, hypergradient, meta_objective
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
    return model, MetaParams.from_module(model, split), lang, inputs


def flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def rel(a, b):
    return float((flat(a) - flat(b)).norm() / flat(b).norm())


def test_exact_matches_brute_force(setup):
    model, params, lang, inputs = setup
    beta = 0.5
    exact = flat(hypergradient(model, params, lang, inputs, beta, method="exact").grad)
    phi = params.phi[lang]
    torch.manual_seed(3)
    for _ in range(3):
        u = [torch.randn_like(p) for p in phi]
        delta = 1e-5
        fp = meta_objective(model, lang, [p + delta * d for p, d in zip(phi, u)], inputs, beta)
        fm = meta_objective(model, lang, [p - delta * d for p, d in zip(phi, u)], inputs, beta)
        numeric = (fp - fm) / (2 * delta)
        assert numeric == pytest.approx(float(exact @ flat(u)), rel=1e-6, abs=1e-10)


def test_central_differences_match_exact_to_second_order(setup):
    model, params, lang, inputs = setup
    beta = 0.5
    exact = hypergradient(model, params, lang, inputs, beta, method="exact")
    assert exact.norms()[2] / exact.norms()[1] > 0.05, "β too small: the test would not see Eq. 4's term"
    errs = []
    for c in (1e-2, 1e-3):
        fd = hypergradient(model, params, lang, inputs, beta, fd_scale=c)
        assert fd.eps == pytest.approx(c / fd.v_norm)
        assert fd.v_norm == pytest.approx(exact.v_norm, rel=1e-12)
        errs.append(rel(fd.second_order, exact.second_order))
        assert rel(fd.grad, exact.grad) < 2 * errs[-1] * exact.norms()[2] / exact.norms()[0]
    assert errs[0] < 1e-3 and 50 < errs[0] / errs[1] < 200, f"central differences are O(ε²): {errs}"


def test_forward_differences_are_first_order_with_one_probe(setup):
    model, params, lang, inputs = setup
    beta = 0.5
    exact = hypergradient(model, params, lang, inputs, beta, method="exact")
    errs, forwards = [], {}
    for scheme in ("central", "forward"):
        calls = []
        hypergradient(model, params, lang, inputs, beta, fd_scheme=scheme,
                      before_forward=lambda phase, j, m: calls.append(phase))
        forwards[scheme] = calls.count("train")
    assert forwards == {"central": 3 * len(inputs.train), "forward": 2 * len(inputs.train)}, forwards
    for c in (1e-2, 1e-3):
        errs.append(rel(hypergradient(model, params, lang, inputs, beta, fd_scale=c, fd_scheme="forward").second_order,
                        exact.second_order))
    assert errs[0] < 5e-2 and 5 < errs[0] / errs[1] < 20, f"forward differences are O(ε): {errs}"


def test_parts_add_up_and_the_direct_term_is_the_plain_gradient_at_beta_zero(setup):
    model, params, lang, inputs = setup
    for method in ("finite_difference", "exact"):
        hg = hypergradient(model, params, lang, inputs, 0.5, method=method)
        torch.testing.assert_close(flat(hg.grad), flat(hg.direct) + flat(hg.second_order), rtol=1e-12, atol=1e-15)
        zero = hypergradient(model, params, lang, inputs, 0.0, method=method)
        assert float(flat(zero.second_order).abs().max()) == 0.0
    # β = 0: F = mean_j L_val^j(θ, φ_j), whose φ_i gradient is language i's validation gradient over |S|
    phi = [p.detach().clone().requires_grad_(True) for p in params.phi[lang]]
    from torch.func import functional_call

    names = params.phi_names[lang]
    (mb,) = dict(inputs.val)[lang]
    loss = functional_call(model, dict(zip(names, phi)), (mb.input_ids, mb.lang_ids, mb.pred_positions, mb.targets),
                           {"lang": lang}) / len(inputs.val)
    expected = torch.autograd.grad(loss, phi)
    torch.testing.assert_close(flat(zero.direct), flat(expected), rtol=1e-10, atol=1e-14)


def test_probes_leave_theta_and_other_languages_bit_identical(setup):
    model, params, lang, inputs = setup
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    values = [t.clone() for t in params.theta]
    for method in ("finite_difference", "exact"):
        hypergradient(model, params, lang, inputs, 0.5, method=method)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    assert all(torch.equal(a, b) for a, b in zip(values, params.theta))


def test_loss_scale_is_removed(setup):
    model, params, lang, inputs = setup
    for method in ("finite_difference", "exact"):
        a = hypergradient(model, params, lang, inputs, 0.5, method=method, fd_scale=1e-3)
        b = hypergradient(model, params, lang, inputs, 0.5, method=method, fd_scale=1e-3, scale=1024.0)
        torch.testing.assert_close(flat(b.grad), flat(a.grad), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(flat(b.second_order), flat(a.second_order), rtol=1e-8, atol=1e-12)
        assert b.v_norm == pytest.approx(a.v_norm) and b.eps == a.eps or b.eps == pytest.approx(a.eps)


def test_unknown_method_is_refused(setup):
    model, params, lang, inputs = setup
    with pytest.raises(ValueError, match="fd_scheme one of"):
        hypergradient(model, params, lang, inputs, 0.5, fd_scheme="backward")
