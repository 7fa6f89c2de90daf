"""Triton kernels against their plain-torch references (CPU: TRITON_INTERPRET=1; GPU: native, plus bf16).

Tolerances are relative (‖out − ref‖ / ‖ref‖) against a float64 reference computed from the same inputs:
fp32 kernels use IEEE fp32 dots with fp32 accumulation (error ~ √K·2⁻²⁴ ≈ 1e-6, allowed 1e-5); fp16 and
bf16 round the activation h and the outputs to the storage type (unit roundoff 4.9e-4 and 3.9e-3), so
their errors sit near one unit roundoff (allowed 3e-3 and 2e-2).
"""
import logging

import pytest
import torch

from negint_ds.kernels import bottleneck_adapter, dispatch, fd_hvp_reference, reference_only
from negint_ds.kernels.adapter_reference import bottleneck_adapter_reference
from negint_ds.kernels.adapter_triton import bottleneck_adapter_triton
from negint_ds.kernels import fd_hvp_triton
from negint_ds.kernels.ulp import max_ulp_distance, ulp

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])  # bf16 garbage in the interpreter
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
SHAPES = [(64, 512, 128), (33, 768, 192), (50, 40, 10), (1, 16, 4), (17, 100, 33), (20, 600, 300), (9, 64, 512)]
# (tokens, d, b): odd ones too, and b up to 512 (BLOCK_B 512)


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


@pytest.fixture
def kernel_mode(monkeypatch):
    """Set the dispatch mode for one test (and restore it after); ``fused_cpu`` makes auto mode treat CPU
    tensors as it treats CUDA ones, so its self-check and fallback logic run under the interpreter."""
    monkeypatch.setattr(dispatch, "_verified", {})

    def set_mode(mode, fused_cpu=False):
        monkeypatch.setattr(dispatch, "_MODE", mode)
        if fused_cpu:
            monkeypatch.setattr(dispatch, "_fused_device", lambda t: True)
    return set_mode


class _Records(list):
    @property
    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self)


@pytest.fixture
def kernel_warnings(monkeypatch):
    """Warnings of the kernels' logger, each once (caplog on root would see them twice or, after an in-process
    Trainer stopped propagation at "negint_ds", not at all)."""
    records = _Records()
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    monkeypatch.setattr(dispatch.log, "handlers", [*dispatch.log.handlers, handler])
    return records


def test_self_check_runs_under_no_grad_and_falls_back_on_a_wrong_kernel(monkeypatch, kernel_mode, kernel_warnings):
    import negint_ds.kernels.adapter_triton as at

    x, wd, *_ = inputs(8, 24, 6, torch.float32)
    kernel_mode("auto", fused_cpu=True)
    with torch.no_grad():  # the first call of a run comes from evaluation
        assert dispatch._adapter_ok(x, wd, "gelu")
    monkeypatch.setattr(dispatch, "_verified", {})
    monkeypatch.setattr(at, "bottleneck_adapter_triton", lambda *a: bottleneck_adapter_reference(*a) * 1.01)
    with torch.no_grad():
        assert not dispatch._adapter_ok(x, wd, "gelu")
    assert "disagrees with the reference" in kernel_warnings.text


def _out_of_resources(*args, **kwargs):
    from triton.runtime.errors import OutOfResources

    raise OutOfResources(294912, 232448, "shared memory")


def test_a_launch_error_falls_back_to_the_reference_with_one_warning(monkeypatch, kernel_mode, kernel_warnings):
    """Auto mode: a kernel that fails to launch (here: out of shared memory, as fp32 with b > 256 did on an
    H100) — at the self-check or after it passed — gives the reference's result, warns once, and is not
    tried again for that configuration."""
    import negint_ds.kernels.adapter_triton as at

    kernel_mode("auto", fused_cpu=True)
    x, *w = inputs(16, 24, 6, torch.float32)
    key = dispatch._adapter_key(x, w[0], "gelu")
    dispatch._verified[key] = True  # the self-check passed; the failure comes at a later launch
    launches = []
    monkeypatch.setattr(at, "adapter_forward", lambda *a: launches.append(1) or _out_of_resources())
    for _ in range(3):
        y = bottleneck_adapter(x, *w)
        torch.testing.assert_close(y, bottleneck_adapter_reference(x, *w), rtol=0, atol=0)
    assert len(launches) == 1, "a configuration that failed is not launched again"
    assert kernel_warnings.text.count("failed at launch") == 1 and "OutOfResources" in kernel_warnings.text
    # the same error inside the self-check is caught there
    monkeypatch.setattr(dispatch, "_verified", {})
    assert not dispatch.adapter_uses_triton(x, *w, "gelu")
    assert "failed to compile or launch" in kernel_warnings.text
    # an explicit triton request is never masked
    kernel_mode("triton")
    from triton.runtime.errors import OutOfResources

    with pytest.raises(OutOfResources):
        bottleneck_adapter(x, *w)


def test_a_backward_launch_error_falls_back_too(monkeypatch, kernel_mode, kernel_warnings):
    import negint_ds.kernels.adapter_triton as at

    kernel_mode("auto", fused_cpu=True)
    x, *w = [t.requires_grad_(True) for t in inputs(16, 24, 6, torch.float32)]
    dispatch._verified[dispatch._adapter_key(x, w[0], "gelu")] = True
    monkeypatch.setattr(at, "adapter_backward", _out_of_resources)
    y = bottleneck_adapter(x, *w)
    grads = torch.autograd.grad(y, [x, *w], torch.ones_like(y))
    ref = torch.autograd.grad(bottleneck_adapter_reference(x, *w), [x, *w], torch.ones_like(y))
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    assert kernel_warnings.text.count("failed at launch") == 1
    # the fallback returns exactly what the op's schema promises (its fake implementation, used when tracing)
    needs = [True, False, False, True, False]
    got = torch.ops.negint_ds.bottleneck_adapter_backward(torch.ones_like(y), x, *w, "gelu", needs)
    assert [tuple(t.shape) for t in got] == [tuple(t.shape) if n else (0,) for t, n in zip([x, *w], needs)]


def test_eligibility_follows_the_devices_shared_memory():
    """A configuration whose kernels need more shared memory than the GPU allows is refused up front (the
    recorded figures are checked against the compiled kernels in tests/test_aot_report.py)."""
    from negint_ds.kernels import adapter_configs as C

    for prec, dt in (("16", torch.bfloat16), ("32", torch.float32)):
        for bb in (16, 32, 64, 128, 256, 512):
            assert C.fits(dt, bb, C.H100_SMEM_PER_BLOCK) is None, (prec, bb)
            need = max(min(c.smem for c in table[(prec, bb)])
                       for table in (C.FORWARD, C.BACKWARD_ROWS, C.BACKWARD_WEIGHTS))
            assert C.fits(dt, bb, need) is None
            assert "shared memory" in C.fits(dt, bb, need - 1)
    assert "at most 512" in at_unsupported(600)


def at_unsupported(b):
    from negint_ds.kernels.adapter_triton import unsupported

    x, *w = inputs(4, 32, b, torch.float32)
    return unsupported(x, *w, "gelu")


def test_dispatch_modes(monkeypatch):
    x, *w = inputs(8, 16, 4, torch.float32)
    prev = dispatch.mode()
    try:
        monkeypatch.setenv("NEGINT_DS_KERNELS", "torch")
        assert dispatch.mode() == prev, "the environment is read once, not per call"
        assert dispatch.configure() == "torch"
        assert dispatch.fd_ops(DEV) is fd_hvp_reference
        monkeypatch.setenv("NEGINT_DS_KERNELS", "triton")
        dispatch.configure()
        assert dispatch.fd_ops(DEV) is fd_hvp_triton
        torch.testing.assert_close(bottleneck_adapter(x, *w), bottleneck_adapter_reference(x, *w), rtol=1e-5,
                                   atol=1e-6)
        monkeypatch.setenv("NEGINT_DS_KERNELS", "fast")
        with pytest.raises(ValueError, match="auto, triton or torch"):
            dispatch.configure()
    finally:
        dispatch.configure(prev)


def test_frozen_weights_skip_the_weight_kernel_and_frozen_x_skips_dx(monkeypatch):
    """``needs_input_grad``: no weight-gradient launch for frozen adapters, no dx written for a frozen input;
    the gradients that are asked for still match the float64 reference."""
    import negint_ds.kernels.adapter_triton as at

    launches = []
    for name in ("_adapter_bwd_rows_kernel", "_adapter_bwd_weights_kernel"):
        real = getattr(at, name)

        class Spy:
            def __init__(self, real, name):
                self.real, self.name = real, name

            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    launches.append((self.name, {k: v for k, v in kwargs.items() if k.startswith(("WRITE", "DO"))}))
                    return self.real[grid](*args, **kwargs)
                return launch
        monkeypatch.setattr(at, name, Spy(real, name))
    x, wd, bd, wu, bu = inputs(40, 48, 12, torch.float32)
    xg = x.clone().requires_grad_(True)
    y = bottleneck_adapter_triton(xg, wd, bd, wu, bu)
    (dx,) = torch.autograd.grad(y, [xg], torch.ones_like(y))
    assert [n for n, _ in launches] == ["_adapter_bwd_rows_kernel"]
    assert launches[0][1] == {"WRITE_DX": True, "WRITE_H": False, "WRITE_DZ": False}
    xr = x.double().requires_grad_(True)
    (dxr,) = torch.autograd.grad(bottleneck_adapter_reference(xr, *[t.double() for t in (wd, bd, wu, bu)]), [xr],
                                 torch.ones_like(xr))
    assert rel(dx, dxr) < 1e-5
    launches.clear()
    wug = wu.clone().requires_grad_(True)
    y = bottleneck_adapter_triton(x, wd, bd, wug, bu)
    torch.autograd.grad(y, [wug], torch.ones_like(y))
    assert launches[0][1] == {"WRITE_DX": False, "WRITE_H": True, "WRITE_DZ": False}
    assert launches[1][1] == {"DO_UP": True, "DO_DOWN": False}


def test_weight_gradients_split_over_tokens_are_exact_and_deterministic(monkeypatch):
    """The weight kernel's token splits (several per GPU; one on a 2-core CPU) sum to the reference's gradient,
    including a last split shorter than the others, and repeat bit for bit."""
    import negint_ds.kernels.adapter_triton as at

    monkeypatch.setattr(at, "token_splits", lambda *a: 3)
    shape = (201, 40, 10)
    check(inputs(*shape, torch.float32), torch.float32)
    leaves = [t.requires_grad_(True) for t in inputs(*shape, torch.float32)]
    runs = [torch.autograd.grad(bottleneck_adapter_triton(*leaves), leaves, torch.ones(201, 40)) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_adapter_traces_under_torch_compile_without_graph_breaks(kernel_mode):
    """The adapter is one custom-op node for dynamo (mode read once, checks outside the traced forward), and the
    compiled module's output and gradients equal eager's."""
    import torch._dynamo

    from negint_ds.model import BottleneckAdapter

    kernel_mode("triton")
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = BottleneckAdapter(32, 8, "gelu", 0.0)
    z = torch.randn(2, 5, 32, requires_grad=True)
    explain = torch._dynamo.explain(m)(z)
    assert explain.graph_break_count == 0, explain.break_reasons
    assert explain.graph_count == 1
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    y = compiled(z)
    ye = m(z)
    torch.testing.assert_close(y, ye, rtol=0, atol=0)
    g = torch.autograd.grad(y.square().sum(), [z, m.down.weight, m.up.bias])
    ge = torch.autograd.grad(ye.square().sum(), [z, m.down.weight, m.up.bias])
    for a, b in zip(g, ge):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    torch._dynamo.reset()


def test_axpy_comparison_is_fma_aware():
    """θ + αv fused (one rounding, as Triton emits on a GPU) vs eager torch (two roundings): thousands of
    elements differ, so torch.equal is the wrong test; all are within 1 ulp at max(|θ|, |αv|), but not at the
    result's own magnitude where θ and αv cancel."""
    g = torch.Generator().manual_seed(0)
    th, v, a = torch.randn(65733, generator=g), torch.randn(65733, generator=g), 0.37
    eager = th + a * v
    fused = (th.double() + a * v.double()).float()
    assert int((eager != fused).sum()) > 1000
    scale = torch.maximum(th.abs(), (a * v).abs())
    assert max_ulp_distance(fused, eager, scale) <= 1.0
    assert max_ulp_distance(fused, eager) > 100


def test_fd_self_check_accepts_one_fma_rounding_and_rejects_a_real_error():
    """The FD self-check compares θ + αv in ulps: a kernel that fuses the multiply-add (one rounding, as
    Triton does on a GPU) passes in every dtype, bf16 included — a relative 1e-5 bound rejects it in bf16 —
    while a kernel off by a relative 1e-3 fails."""
    from types import SimpleNamespace

    R = fd_hvp_reference

    def fma_perturb(theta, v, alpha, out=None):
        a = float(torch.tensor(alpha, dtype=torch.float32))  # a Python float reaches the kernel as fp32
        return [(t.double() + a * d.double()).to(t.dtype) for t, d in zip(theta, v)]

    fma = SimpleNamespace(global_norm=R.global_norm, combine=R.combine, perturb=fma_perturb)
    dts = (torch.float32, torch.float16, torch.bfloat16)
    errs = dispatch.fd_check_errors(fma, R, torch.device("cpu"), dts)
    assert all(e <= dispatch.FD_TOLERANCE[k.split()[0]] for k, e in errs.items()), errs
    # one element rounded the other way (what a fused multiply-add can do): 1 ulp, but a relative error
    # of about 2^-8 / √n ≈ 1.5e-5 for n = 70,001 — over the old 1e-5 bound
    th = [torch.randn(70001, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)]
    v = [torch.randn(70001, generator=torch.Generator().manual_seed(1))]
    ref = R.perturb(th, v, 0.3)[0]
    flipped = ref.clone()
    flipped[7] = (ref[7].double() + ulp(ref[7:8])[0]).to(torch.bfloat16)
    assert rel(flipped, ref.double()) > 1e-5
    scale = torch.maximum(th[0].double().abs(), 0.3 * v[0].double().abs())
    assert max_ulp_distance(flipped, ref, scale) <= dispatch.FD_TOLERANCE["perturb"]
    off = SimpleNamespace(global_norm=R.global_norm, combine=R.combine,
                          perturb=lambda th, v, a, out=None: [p * 1.001 for p in R.perturb(th, v, a)])
    errs = dispatch.fd_check_errors(off, R, torch.device("cpu"), (torch.float32,))
    assert errs["perturb torch.float32"] > dispatch.FD_TOLERANCE["perturb"]


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
        monkeypatch.setattr(dispatch, "_MODE", kernels)
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


def test_large_d_uses_whichever_implementation_was_measured_faster(monkeypatch, kernel_mode):
    """d ≥ 1024 is compute-bound: the set-up timing picks the fused kernel or the GEMM-epilogue chain, and the
    adapter then runs the chosen one (with the same result as the reference either way)."""
    import negint_ds.kernels.adapter_gemm_chain as gc

    kernel_mode("auto", fused_cpu=True)
    monkeypatch.setattr(dispatch, "_choice", {})
    x, *w = inputs(8, 32, 8, torch.float32)
    key = dispatch._adapter_key(x, w[0], "gelu")
    calls = []
    timer = lambda fn: (calls.append(fn) or fn()) and (1.0 if len(calls) == 1 else 0.5)  # noqa: E731 - chain faster
    assert dispatch.choose_by_time(key, x, w, "gelu", timer=timer, tokens=64) == "gemm_chain"
    used = []
    real = gc.bottleneck_adapter_gemm_chain
    monkeypatch.setattr(gc, "bottleneck_adapter_gemm_chain", lambda *a: used.append(1) or real(*a))
    y = bottleneck_adapter(x, *w)
    assert used == [1]
    torch.testing.assert_close(y, bottleneck_adapter_reference(x, *w), rtol=1e-5, atol=1e-6)
    slower_chain = lambda fn: fn() and (0.5 if calls.append(fn) or len(calls) % 2 == 1 else 1.0)  # noqa: E731
    calls.clear()
    assert dispatch.choose_by_time(key, x, w, "gelu", timer=slower_chain, tokens=64) == "triton"
    used.clear()
    bottleneck_adapter(x, *w)
    assert used == []
