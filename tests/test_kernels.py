"""Triton kernels against their plain-torch references (CPU: TRITON_INTERPRET=1; GPU: native, plus bf16).

Tolerances are relative (‖out − ref‖ / ‖ref‖) against a float64 reference computed from the same inputs:
fp32 kernels use IEEE fp32 dots with fp32 accumulation (error ~ √K·2⁻²⁴ ≈ 1e-6, allowed 1e-5); fp16 and
bf16 round the activation h and the outputs to the storage type (unit roundoff 4.9e-4 and 3.9e-3), so
their errors sit near one unit roundoff (allowed 3e-3 and 2e-2).
"""
import pytest
import torch

from negint_ds.kernels import bottleneck_adapter, dispatch, fd_hvp_reference, reference_only
from negint_ds.kernels.adapter_reference import bottleneck_adapter_reference
from negint_ds.kernels.adapter_triton import bottleneck_adapter_triton
from negint_ds.kernels import fd_hvp_triton

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])  # bf16 garbage in the interpreter
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
SHAPES = [(64, 512, 128), (33, 768, 192), (50, 40, 10), (1, 16, 4), (17, 100, 33)]  # (tokens, d, b), odd ones too


def rel(a, ref):
    return float((a.detach().double() - ref.detach()).norm() / ref.detach().norm().clamp_min(1e-30))


def inputs(T, d, b, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *s, sc=1.0: (torch.randn(*s, generator=g) * sc).to(DEV, dtype)  # noqa: E731
    return [make(T, d), make(b, d, sc=d ** -0.5), make(b, sc=0.5), make(d, b, sc=b ** -0.5), make(d, sc=0.5)]


def check(fn_inputs, dtype, activation="gelu", shape=None):
    x, wd, bd, wu, bu = fn_inputs
    leaves = [t.clone().requires_grad_(True) for t in fn_inputs]
    y = bottleneck_adapter_triton(*leaves, activation)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(9)).to(DEV, dtype)
    grads = torch.autograd.grad(y, leaves, dy)
    ref_leaves = [t.detach().double().requires_grad_(True) for t in fn_inputs]
    yr = bottleneck_adapter_reference(*ref_leaves, activation)
    refs = torch.autograd.grad(yr, ref_leaves, dy.double())
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.isfinite(y).all()
    errors = [rel(y, yr)] + [rel(g_, r) for g_, r in zip(grads, refs)]
    assert max(errors) <= TOL[dtype], dict(zip(["y", "dx", "dW_down", "db_down", "dW_up", "db_up"], errors))
    for g_, leaf in zip(grads, leaves):
        assert g_.shape == leaf.shape and g_.dtype == leaf.dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_adapter_forward_and_every_gradient(shape, dtype):
    check(inputs(*shape, dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_relu_and_three_dimensional_input(dtype):
    x, *w = inputs(24, 96, 24, dtype)
    check([x.view(4, 6, 96), *w], dtype, activation="relu")
    check([x.view(4, 6, 96), *w], dtype, activation="gelu")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided_inputs_and_weights(dtype):
    T, d, b = 40, 72, 18
    x, wd, bd, wu, bu = inputs(T, d, b, dtype)
    wide = torch.zeros(T, d + 13, dtype=dtype, device=DEV)
    wide[:, 5:5 + d] = x
    x_view = wide[:, 5:5 + d]  # row stride d + 13: not contiguous
    wd_t = wd.t().contiguous().t()  # (b, d) with strides (1, b)
    wu_t = wu.t().contiguous().t()
    assert not x_view.is_contiguous() and not wd_t.is_contiguous() and not wu_t.is_contiguous()
    check([x_view, wd_t, bd, wu_t, bu], dtype)


def test_activation_is_recomputed_not_saved():
    x, *w = [t.requires_grad_(True) for t in inputs(64, 32, 8, torch.float32)]
    y = bottleneck_adapter_triton(x, *w)
    saved = y.grad_fn.saved_tensors
    assert [tuple(t.shape) for t in saved] == [(64, 32), (8, 32), (8,), (32, 8)], "only x and the weights are saved"


def test_double_backward_uses_the_reference_explicitly():
    x, *w = [t.double().requires_grad_(True) for t in inputs(8, 16, 4, torch.float32)]
    y = bottleneck_adapter_triton(x.float(), *[t.float() for t in w])
    (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), w[0])  # the fused backward is once-differentiable
    with reference_only():
        y = bottleneck_adapter(x, *w)
        (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        (h,) = torch.autograd.grad(g.sum(), w[0])
    assert torch.isfinite(h).all() and h.abs().sum() > 0


def test_bad_inputs_are_refused():
    x, wd, bd, wu, bu = inputs(8, 16, 4, torch.float32)
    with pytest.raises(ValueError, match="shapes do not match"):
        bottleneck_adapter_triton(x, wd, bd, wu.t(), bu)
    with pytest.raises(ValueError, match="activation"):
        bottleneck_adapter_triton(x, wd, bd, wu, bu, "tanh")
    with pytest.raises(ValueError, match="one dtype"):
        bottleneck_adapter_triton(x.half(), wd, bd, wu, bu)


def test_self_check_runs_under_no_grad_and_falls_back_on_a_wrong_kernel(monkeypatch, caplog):
    import negint_ds.kernels.adapter_triton as at

    x, wd, *_ = inputs(8, 24, 6, torch.float32)
    monkeypatch.setenv("NEGINT_DS_KERNELS", "auto")
    monkeypatch.setattr(dispatch, "_verified", {})
    # An in-process training run earlier in the session stops propagation at the "negint_ds" logger,
    # so listen on the kernels' logger itself rather than on root.
    monkeypatch.setattr(dispatch.log, "handlers", [*dispatch.log.handlers, caplog.handler])
    with torch.no_grad():  # the first call of a run comes from evaluation
        assert dispatch._adapter_ok(x, wd, "gelu")
    monkeypatch.setattr(dispatch, "_verified", {})
    monkeypatch.setattr(at, "bottleneck_adapter_triton", lambda *a: bottleneck_adapter_reference(*a) * 1.01)
    with torch.no_grad():
        assert not dispatch._adapter_ok(x, wd, "gelu")
    assert "disagrees with the reference" in caplog.text


def test_dispatch_modes(monkeypatch):
    x, *w = inputs(8, 16, 4, torch.float32)
    monkeypatch.setenv("NEGINT_DS_KERNELS", "torch")
    assert dispatch.fd_ops(DEV) is fd_hvp_reference
    monkeypatch.setenv("NEGINT_DS_KERNELS", "triton")
    assert dispatch.fd_ops(DEV) is fd_hvp_triton
    torch.testing.assert_close(bottleneck_adapter(x, *w), bottleneck_adapter_reference(x, *w), rtol=1e-5, atol=1e-6)
    monkeypatch.setenv("NEGINT_DS_KERNELS", "fast")
    with pytest.raises(ValueError, match="auto, triton or torch"):
        dispatch.mode()


# ----------------------------------------------------------------------------- finite-difference HVP ops
FD_SHAPES = [(3,), (1000, 7), (17, 1100), (40000,), (2, 3, 5)]


@pytest.mark.parametrize("theta_dtype", DTYPES + [torch.float64], ids=str)
def test_fd_ops_match_reference(theta_dtype):
    g = torch.Generator().manual_seed(1)
    vdt = torch.float64 if theta_dtype == torch.float64 else torch.float32
    th = [torch.randn(s, generator=g).to(DEV, theta_dtype) for s in FD_SHAPES]
    v = [torch.randn(s, generator=g).to(DEV, vdt) for s in FD_SHAPES]
    before = [t.clone() for t in th]
    assert rel(fd_hvp_triton.global_norm(v), fd_hvp_reference.global_norm(v).double()) < 1e-6
    for alpha in (0.37, -1e-3, torch.tensor(2.5, dtype=torch.float64, device=DEV)):
        got, ref = fd_hvp_triton.perturb(th, v, alpha), fd_hvp_reference.perturb(th, v, alpha)
        assert all(torch.equal(a, b) for a, b in zip(got, ref)), "θ + αv must round exactly like the reference"
    out = [torch.full_like(t, float("nan")) for t in th]  # poisoned: every element must be written
    res = fd_hvp_triton.perturb(th, v, 0.5, out=out)
    assert all(r is o for r, o in zip(res, out)) and all(torch.isfinite(o).all() for o in out)
    assert all(torch.equal(a, b) for a, b in zip(th, before)), "θ must be untouched"
    d = [None] + v[1:]
    p = [t.to(vdt) for t in th]
    m = [None, *[t.to(vdt) * 0.5 for t in th[1:]]]
    got = fd_hvp_triton.combine(d, p, m, 0.7, 1e-3)
    ref = fd_hvp_reference.combine(d, p, m, 0.7, 1e-3)
    assert max(rel(a, b.double()) for a, b in zip(got, ref)) < 1e-6
    with pytest.raises(ValueError, match="no gradient"):
        fd_hvp_triton.combine([None], [None], [None], 1.0, 1.0)


def test_fd_hvp_matches_double_backward_hvp_to_second_order():
    """(∇φ L(θ+εv) − ∇φ L(θ−εv)) / 2ε built from the Triton ops → ∇²_{φθ} L · v with error O(ε²)."""
    from negint_ds.config import AdapterConfig, MLMConfig, ModelConfig
    from negint_ds.meta import mlm_loss
    from negint_ds.meta import math_sdpa
    from negint_ds.mlm import MLMBatch, mask_tokens
    from negint_ds.model import build_model
    from negint_ds.params import split_parameters

    torch.manual_seed(0)
    cfg = ModelConfig(layers=1, dim=16, heads=2, ffn_dim=32, dropout=0.0, attention_dropout=0.0, max_positions=8,
                      adapters=AdapterConfig(kind="language", bottleneck=4))
    model = build_model(cfg, 30, 2).double().to(DEV)
    split = split_parameters(model, 2)
    tn, pn = list(split.theta), split.phi_names(1)
    gen = torch.Generator().manual_seed(3)
    ids, pos, tgt = mask_tokens(torch.randint(5, 30, (3, 8), generator=gen), MLMConfig(mask_prob=0.4), 30, 4, 5, gen)
    batch = MLMBatch(ids, torch.ones(3, dtype=torch.long), pos, tgt).to(DEV)
    theta = [split.theta[n].detach() for n in tn]
    v = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(DEV) for t in theta]

    def grad_phi(th):
        ph = [split.phi[1][n].detach().requires_grad_(True) for n in pn]
        with reference_only():
            loss = mlm_loss(model, {**dict(zip(tn, th)), **dict(zip(pn, ph))}, batch, 1)
        return torch.autograd.grad(loss, ph)

    # exact mixed HVP by double backward: ∇φ (∇θ L · v)
    th_leaf = [t.clone().requires_grad_(True) for t in theta]
    ph = [split.phi[1][n].detach().requires_grad_(True) for n in pn]
    with reference_only(), math_sdpa():
        loss = mlm_loss(model, {**dict(zip(tn, th_leaf)), **dict(zip(pn, ph))}, batch, 1)
        gth = torch.autograd.grad(loss, th_leaf, create_graph=True)
        exact = torch.autograd.grad(sum((a * b).sum() for a, b in zip(gth, v)), ph)
    exact_flat = torch.cat([e.reshape(-1) for e in exact])

    errors, v_norm = [], float(fd_hvp_triton.global_norm(v))
    for c in (1e-2, 5e-3):  # ε = c/‖v‖ as in the meta driver: the perturbation θ±εv has norm c
        eps = c / v_norm
        gp = grad_phi(fd_hvp_triton.perturb(theta, v, eps))
        gm = grad_phi(fd_hvp_triton.perturb(theta, v, -eps))
        zeros = [torch.zeros_like(t) for t in gp]
        fd = fd_hvp_triton.combine(zeros, gp, gm, -1.0, eps)  # 0 − (−1)(g⁺ − g⁻)/2ε
        errors.append(float((torch.cat([f.reshape(-1) for f in fd]) - exact_flat).norm() / exact_flat.norm()))
    # central differences: error ≈ K c² (third derivatives of L, here K ≈ 1); halving c quarters it
    assert errors[0] < 1e-2 ** 2, errors
    assert errors[1] < errors[0] / 3, f"not second order in ε: {errors}"


def test_model_and_meta_step_through_the_kernels(monkeypatch):
    """The model's adapters (also through functional_call) and the FD hypergradient give the torch results."""
    from negint_ds.config import AdapterConfig, MLMConfig, ModelConfig
    from negint_ds.meta import MetaInputs, MetaParams, hypergradient
    from negint_ds.mlm import MLMBatch, mask_tokens
    from negint_ds.model import build_model
    from negint_ds.params import split_parameters

    torch.manual_seed(0)
    cfg = ModelConfig(layers=2, dim=32, heads=2, ffn_dim=64, dropout=0.0, attention_dropout=0.0, max_positions=8,
                      adapters=AdapterConfig(kind="language", bottleneck=8))
    model = build_model(cfg, 40, 2).to(DEV)
    split = split_parameters(model, 2)
    gen = torch.Generator().manual_seed(5)

    def batch(lang):
        ids, pos, tgt = mask_tokens(torch.randint(5, 40, (4, 8), generator=gen), MLMConfig(), 40, 4, 5, gen)
        return MLMBatch(ids, torch.full((4,), lang), pos, tgt).to(DEV)

    inputs = MetaInputs([batch(1)], [(0, [batch(0)]), (1, [batch(1)])])
    results = {}
    for kernels in ("torch", "triton"):
        monkeypatch.setenv("NEGINT_DS_KERNELS", kernels)
        b = inputs.train[0]
        loss = model(b.input_ids, b.lang_ids, b.pred_positions, b.targets, lang=1)
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        hg = hypergradient(model, MetaParams.from_module(model, split), 1, inputs, beta=0.1, fd_scale=1e-2,
                           ops=dispatch.fd_ops(DEV))
        results[kernels] = (loss, grads, hg)
    (l0, g0, h0), (l1, g1, h1) = results["torch"], results["triton"]
    assert float(abs(l0 - l1).detach()) < 1e-5
    assert all(a is None and b is None or rel(b, a.double()) < 1e-4 for a, b in zip(g0, g1))
    assert max(rel(b, a.double()) for a, b in zip(h0.grad, h1.grad)) < 1e-3
