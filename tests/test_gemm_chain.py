"""The GEMM-epilogue adapter chain against a float64 reference (CPU; fp32 GEMMs: relative error ~ √K·2⁻²⁴).

Forward and all five gradients, gelu and relu, saved or recomputed activation, 2-D / 3-D / strided x; the
backward runs only the GEMMs whose gradients are needed (counted with the profiler); bad inputs raise the
reference's ValueErrors.
"""
import pytest
import torch

from negint_ds.kernels.adapter_gemm_chain import bottleneck_adapter_gemm_chain
from negint_ds.kernels.adapter_reference import bottleneck_adapter_reference

TOL = 1e-5
NAMES = ["y", "dx", "dW_down", "db_down", "dW_up", "db_up"]


def rel(a, ref):
    return float((a.detach().double() - ref.detach()).norm() / ref.detach().norm().clamp_min(1e-30))


def weights(d, b, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*s, generator=g) * sc).to(dtype) for s, sc in
            (((b, d), d ** -0.5), ((b,), 0.5), ((d, b), b ** -0.5), ((d,), 0.5))]


def check(x, w, activation, recompute=False):
    leaves = [x.detach().requires_grad_(True)] + [t.clone().requires_grad_(True) for t in w]
    assert leaves[0].stride() == x.stride()  # the caller's strides reach the chain
    y = bottleneck_adapter_gemm_chain(*leaves, activation, recompute=recompute)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(9), dtype=y.dtype)
    grads = torch.autograd.grad(y, leaves, dy)
    ref_leaves = [t.detach().double().requires_grad_(True) for t in leaves]
    yr = bottleneck_adapter_reference(*ref_leaves, activation)
    refs = torch.autograd.grad(yr, ref_leaves, dy.double())
    assert y.shape == x.shape and y.dtype == x.dtype
    errors = dict(zip(NAMES, [rel(y, yr)] + [rel(g_, r) for g_, r in zip(grads, refs)]))
    assert max(errors.values()) <= TOL, errors
    for g_, leaf in zip(grads, leaves):
        assert g_.shape == leaf.shape and g_.dtype == leaf.dtype


@pytest.mark.parametrize("recompute", [False, True], ids=["saved", "recompute"])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("shape", [(64, 96, 24), (33, 40, 10), (1, 16, 4)], ids=lambda s: "x".join(map(str, s)))
def test_forward_and_every_gradient_vs_fp64(shape, activation, recompute):
    T, d, b = shape
    x = torch.randn(T, d, generator=torch.Generator().manual_seed(1))
    check(x, weights(d, b), activation, recompute)


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_three_dimensional_and_strided_inputs(activation):
    w = weights(48, 12)
    x3 = torch.randn(4, 6, 48, generator=torch.Generator().manual_seed(2))
    check(x3, w, activation)
    wide = torch.randn(4, 6, 96, generator=torch.Generator().manual_seed(3))
    check(wide[..., ::2], w, activation)  # last-dim stride 2
    check(wide[:, :, 10:58], w, activation)  # rows strided by 96, a view of a wider buffer
    check(x3.transpose(0, 1), w, activation)  # leading dims permuted: reshape must copy


def test_matches_the_reference_bitwise_for_relu_where_epilogue_is_exact():
    # relu(round(a)) == round(relu(a)): the fused ReLU epilogue changes nothing against relu after the GEMM
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(4))
    w = weights(64, 16)
    with torch.no_grad():
        from negint_ds.kernels.adapter_gemm_chain import _down
        _, h = _down(x, w[0], w[1], "relu")
        assert torch.equal(h, torch.relu(torch.addmm(w[1], x, w[0].t())))


def _backward_ops(x, w, activation, recompute=False):
    """(aten::mm output shapes, aten::addmm count, aten::sum count, grads) of one backward."""
    y = bottleneck_adapter_gemm_chain(x, *w, activation, recompute=recompute)
    leaves = [t for t in [x, *w] if t.requires_grad]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        grads = torch.autograd.grad(y, leaves, torch.ones_like(y))
    events = prof.events()
    mm = sorted(tuple(e.input_shapes[0][:1] + e.input_shapes[1][1:]) for e in events if e.name == "aten::mm")
    addmm = sum(e.name in ("aten::addmm", "aten::_addmm_activation") for e in events)
    sums = sum(e.name == "aten::sum" for e in events)
    return mm, addmm, sums, grads


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_backward_runs_only_the_needed_gemms(activation):
    T, d, b = 40, 32, 8
    x0 = torch.randn(T, d, generator=torch.Generator().manual_seed(5))
    w0 = weights(d, b)
    # everything trainable: dh = dy·W_up (T, b), dW_down = dzᵀx (b, d), dW_up = dyᵀh (d, b); dx = addmm; 2 sums
    mm, addmm, sums, _ = _backward_ops(x0.clone().requires_grad_(True),
                                       [t.clone().requires_grad_(True) for t in w0], activation)
    assert mm == sorted([(T, b), (b, d), (d, b)]) and addmm == 1 and sums == 2
    # frozen weights (the adapter inside a frozen model, only dx flows): no weight-gradient GEMMs or sums
    mm, addmm, sums, (dx,) = _backward_ops(x0.clone().requires_grad_(True), w0, activation)
    assert mm == [(T, b)] and addmm == 1 and sums == 0
    x_ref = x0.double().requires_grad_(True)
    (dx_ref,) = torch.autograd.grad(bottleneck_adapter_reference(x_ref, *[t.double() for t in w0], activation),
                                    x_ref, torch.ones(T, d, dtype=torch.float64))
    assert rel(dx, dx_ref) <= TOL
    # only W_up and b_up trainable (x a constant input): no dh, dz, dx or dW_down; h is saved, no recompute
    mm, addmm, sums, _ = _backward_ops(x0, [w0[0], w0[1], w0[2].clone().requires_grad_(True),
                                            w0[3].clone().requires_grad_(True)], activation)
    assert mm == [(d, b)] and addmm == 0 and sums == 1
    # with recompute the forward GEMM runs again (z or h), and nothing else extra
    mm, addmm, sums, _ = _backward_ops(x0, [w0[0], w0[1], w0[2].clone().requires_grad_(True), w0[3]], activation,
                                       recompute=True)
    assert mm == [(d, b)] and addmm == 1 and sums == 0


def test_bad_inputs_raise_the_reference_messages():
    x = torch.randn(5, 16)
    w = weights(16, 4)
    cases = [((x, *w), {"activation": "tanh"}),
             ((x, w[0].t(), *w[1:]), {}),
             ((x, w[0], w[1][:3], *w[2:]), {}),
             ((x, *w[:2], w[2].t(), w[3]), {}),
             ((x, *w[:3], w[3][:5]), {}),
             ((x[:, :8], *w), {})]
    for args, kw in cases:
        with pytest.raises(ValueError) as ours:
            bottleneck_adapter_gemm_chain(*args, **kw)
        with pytest.raises(ValueError) as ref:
            bottleneck_adapter_reference(*args, **kw)
        assert str(ours.value) == str(ref.value)


def test_empty_input_and_not_twice_differentiable():
    w = [t.requires_grad_(True) for t in weights(16, 4)]
    x = torch.randn(0, 16, requires_grad=True)
    y = bottleneck_adapter_gemm_chain(x, *w)
    grads = torch.autograd.grad(y, [x, *w], torch.ones_like(y))
    assert y.shape == (0, 16) and all(float(g.abs().sum()) == 0 for g in grads)
    x = torch.randn(3, 16, requires_grad=True)
    (dx,) = torch.autograd.grad(bottleneck_adapter_gemm_chain(x, *w).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):  # once_differentiable: second order goes through the reference
        torch.autograd.grad(dx.sum(), x)
