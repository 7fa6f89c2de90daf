"""Stretched Hard Concrete (Louizos et al. 2018): samples, closed forms against Monte Carlo, gradients, test-time mask."""
import math

import pytest
import torch

from negint_ds.analysis import hard_concrete as hc

LOG_ALPHAS = [-4.0, -1.5, 0.0, 0.7, 2.197, 4.0]
N_MC = 400_000


def mc_samples(log_alpha: float, n: int = N_MC, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    return hc.sample(torch.full((n,), log_alpha, dtype=torch.float64), u)


def test_constants_are_the_papers():
    assert (hc.BETA, hc.GAMMA, hc.ZETA) == (2.0 / 3.0, -0.1, 1.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_samples_lie_in_unit_interval_with_atoms_at_both_ends(dtype):
    g = torch.Generator().manual_seed(1)
    log_alpha = torch.linspace(-6, 6, 13, dtype=dtype).repeat(2000)
    z = hc.sample(log_alpha, torch.rand(log_alpha.shape, generator=g))
    assert z.dtype == dtype and z.shape == log_alpha.shape
    assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0
    assert (z == 0).any() and (z == 1).any() and ((z > 0) & (z < 1)).any()
    # u at the extremes (a float32 U(0,1) draw can be exactly 0) still gives finite samples
    edge = hc.sample(torch.zeros(2, dtype=dtype), torch.tensor([0.0, 1.0]))
    assert torch.equal(edge, torch.tensor([0.0, 1.0], dtype=dtype))


def test_sample_matches_formula_written_out():
    u = torch.tensor([0.01, 0.3, 0.5, 0.8, 0.999], dtype=torch.float64)
    la = torch.tensor([0.5, -1.0, 0.0, 2.0, -3.0], dtype=torch.float64)
    want = []
    for ui, ai in zip(u.tolist(), la.tolist()):
        s = 1.0 / (1.0 + math.exp(-(math.log(ui) - math.log(1 - ui) + ai) / (2 / 3)))
        want.append(min(1.0, max(0.0, s * 1.2 - 0.1)))
    assert hc.sample(la, u).tolist() == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("log_alpha", LOG_ALPHAS)
def test_monte_carlo_atoms_match_closed_forms(log_alpha):
    z = mc_samples(log_alpha)
    la = torch.tensor(log_alpha, dtype=torch.float64)
    p0, p1 = float(hc.prob_zero(la)), float(hc.prob_one(la))
    # binomial standard error at N=400k is <= 7.9e-4; 5 sigma
    tol = 5 * math.sqrt(0.25 / N_MC)
    assert float((z == 0).double().mean()) == pytest.approx(p0, abs=tol)
    assert float((z == 1).double().mean()) == pytest.approx(p1, abs=tol)
    nonzero = float((z != 0).double().mean())
    assert nonzero == pytest.approx(float(hc.expected_l0(la)), abs=tol)


def test_closed_forms_against_louizos_eq_12_by_hand():
    b, g, zt = 2 / 3, -0.1, 1.1
    for a in LOG_ALPHAS:
        la = torch.tensor(a, dtype=torch.float64)
        sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
        assert float(hc.expected_l0(la)) == pytest.approx(sig(a - b * math.log(-g / zt)), rel=1e-12)
        assert float(hc.prob_zero(la)) == pytest.approx(1.0 - float(hc.expected_l0(la)), abs=1e-12)
        assert float(hc.prob_one(la)) == pytest.approx(sig(a - b * math.log((1 - g) / (zt - 1))), rel=1e-12)
        assert float(hc.prob_zero(la) + hc.prob_one(la)) < 1.0


def test_gradients_reach_log_alpha_through_sample_and_expected_l0():
    la = torch.tensor([-0.5, 0.0, 1.0, 8.0], dtype=torch.float64, requires_grad=True)
    u = torch.tensor([0.4, 0.6, 0.3, 0.9], dtype=torch.float64)
    hc.sample(la, u).sum().backward()
    g = la.grad.clone()
    # unclamped samples have dz/dlogα = (ζ−γ)·s(1−s)/β > 0; a sample clamped at 1 (log α = 8) has none
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + la.detach()) / hc.BETA)
    want = (hc.ZETA - hc.GAMMA) * s * (1 - s) / hc.BETA
    assert g[:3].tolist() == pytest.approx(want[:3].tolist(), rel=1e-10) and (g[:3] > 0).all()
    assert float(g[3]) == 0.0
    la.grad = None
    hc.expected_l0(la).sum().backward()
    p = hc.expected_l0(la.detach())
    assert la.grad.tolist() == pytest.approx((p * (1 - p)).tolist(), rel=1e-10)


def test_deterministic_mask_values():
    la = torch.tensor([0.0, 50.0, -50.0, math.log(11.0), -math.log(11.0), 1.0], dtype=torch.float64)
    z = hc.deterministic_mask(la)
    assert float(z[0]) == pytest.approx(0.5, abs=1e-15)
    assert float(z[1]) == 1.0 and float(z[2]) == 0.0
    # the clamp thresholds: log α = ±log((1−γ)/(ζ−1)) = ±log 11 lands exactly on 1 and 0
    assert float(z[3]) == pytest.approx(1.0, abs=1e-12) and float(z[4]) == pytest.approx(0.0, abs=1e-12)
    assert float(z[5]) == pytest.approx(1.2 / (1 + math.exp(-1.0)) - 0.1, rel=1e-12)


def test_init_location_and_its_errors():
    assert hc.init_location(0.5) == 0.0
    assert hc.init_location(0.1) == pytest.approx(math.log(9.0))
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="init drop rate"):
            hc.init_location(bad)


def test_gates_module_initialisation_and_modes():
    g = torch.Generator().manual_seed(0)
    gates = hc.HardConcreteGates(20_000, init_drop_rate=0.1, generator=g)
    la = gates.log_alpha.detach()
    assert la.dtype == torch.float32 and la.shape == (20_000,)
    assert float(la.mean()) == pytest.approx(math.log(9.0), abs=1e-3)
    assert float(la.std()) == pytest.approx(0.01, rel=0.05)
    # near "on" at the start: ẑ ≈ 0.98, P(z=0) ≈ 0.02 (see the class docstring)
    assert float(hc.deterministic_mask(la).mean()) == pytest.approx(0.98, abs=0.005)
    assert float(hc.prob_zero(la).mean()) == pytest.approx(0.022, abs=0.002)
    assert hc.HardConcreteGates(5, init_drop_rate=0.5).log_alpha.abs().max() < 0.1
    with pytest.raises(ValueError):
        hc.HardConcreteGates(0)

    small = hc.HardConcreteGates(4)
    u = torch.tensor([0.1, 0.5, 0.7, 0.99])
    small.train()
    assert torch.equal(small(u=u), hc.sample(small.log_alpha, u))
    a, b = small(generator=torch.Generator().manual_seed(3)), small(generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    small.eval()
    assert torch.equal(small(), hc.deterministic_mask(small.log_alpha))
    assert torch.equal(small.expected_l0(), hc.expected_l0(small.log_alpha))
