"""Multi-tensor finite-difference HVP kernels (``fd_hvp_triton``) against the plain-torch reference.

CPU runs the kernels under ``TRITON_INTERPRET=1`` (set by conftest before any kernel import); bf16 is only
checked on CUDA (the interpreter's bf16 is not faithful). ``perturb`` is compared in ulps at the operands'
magnitude (``kernels/ulp.py``): on a GPU θ + α·v is one fma, eager torch rounds twice.
"""
import contextlib

import pytest
import torch

from negint_ds.kernels import fd_hvp_reference as R
from negint_ds.kernels import fd_hvp_triton as K
from negint_ds.kernels import reference_only
from negint_ds.kernels.ulp import max_ulp_distance, ulp_distance

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])  # bf16 garbage in the interpreter
FD_SHAPES = [(3,), (1000, 7), (17, 1100), (40000,), (2, 3, 5)]
C = K.CHUNK
TAIL_SIZES = [C, C - 1, C + 1, 2 * C, 3, 1]  # whole chunks, one short, one over, tiny


def rel(a, ref):
    return float((a.detach().double() - ref.detach().double()).norm() / ref.detach().double().norm().clamp_min(1e-30))


def alpha_value(alpha) -> float:
    return float(alpha) if torch.is_tensor(alpha) else alpha


def perturb_ulps(got, theta, v, alpha) -> float:
    """Largest distance of ``got`` from the reference, in ulps of θ's dtype at max(|θ|, |α v|)."""
    ref = R.perturb(theta, v, alpha)
    a = alpha_value(alpha)
    return max(max_ulp_distance(g, r, scale=torch.maximum(t.double().abs(), (a * d.double()).abs()))
               for g, r, t, d in zip(got, ref, theta, v))


def randn(shapes, dtype, seed, device=DEV):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).to(device, dtype) for s in shapes]


# ----------------------------------------------------------------------------------- results (ported)
@pytest.mark.parametrize("theta_dtype", DTYPES + [torch.float64], ids=str)
def test_fd_ops_match_reference(theta_dtype):
    vdt = torch.float64 if theta_dtype == torch.float64 else torch.float32
    th, v = randn(FD_SHAPES, theta_dtype, 1), randn(FD_SHAPES, vdt, 2)
    before = [t.clone() for t in th]
    assert rel(K.global_norm(v), R.global_norm(v)) < 1e-6
    for alpha in (0.37, -1e-3, torch.tensor(2.5, dtype=torch.float64, device=DEV),
                  torch.tensor(-0.75, dtype=torch.float32, device=DEV)):
        got = K.perturb(th, v, alpha)
        assert all(g.dtype == t.dtype and g.shape == t.shape for g, t in zip(got, th))
        assert perturb_ulps(got, th, v, alpha) <= 1, "θ + αv must be the reference up to the fma's rounding"
    out = [torch.full_like(t, float("nan")) for t in th]  # poisoned: every element must be written
    res = K.perturb(th, v, 0.5, out=out)
    assert all(r is o for r, o in zip(res, out)) and all(torch.isfinite(o).all() for o in out)
    assert perturb_ulps(out, th, v, 0.5) <= 1
    assert all(torch.equal(a, b) for a, b in zip(th, before)), "θ must be untouched"
    d = [None] + v[1:]
    p = [t.to(vdt) for t in th]
    m = [None, *[t.to(vdt) * 0.5 for t in th[1:]]]
    for eps in (1e-3, torch.tensor(1e-3, device=DEV)):
        got, ref = K.combine(d, p, m, 0.7, eps), R.combine(d, p, m, 0.7, eps)
        assert [g.dtype for g in got] == [r.dtype for r in ref]
        assert max(rel(a, b) for a, b in zip(got, ref)) < 1e-6
    with pytest.raises(ValueError, match="no gradient"):
        K.combine([None], [None], [None], 1.0, 1.0)


def test_fd_hvp_matches_double_backward_hvp_to_second_order():
    """(∇φ L(θ+εv) − ∇φ L(θ−εv)) / 2ε built from the Triton ops → ∇²_{φθ} L · v with error O(ε²)."""
    from negint_ds.config import AdapterConfig, MLMConfig, ModelConfig
    from negint_ds.meta import math_sdpa, mlm_loss
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

    th_leaf = [t.clone().requires_grad_(True) for t in theta]  # exact mixed HVP by double backward
    ph = [split.phi[1][n].detach().requires_grad_(True) for n in pn]
    with reference_only(), math_sdpa():
        loss = mlm_loss(model, {**dict(zip(tn, th_leaf)), **dict(zip(pn, ph))}, batch, 1)
        gth = torch.autograd.grad(loss, th_leaf, create_graph=True)
        exact = torch.autograd.grad(sum((a * b).sum() for a, b in zip(gth, v)), ph)
    exact_flat = torch.cat([e.reshape(-1) for e in exact])

    errors, v_norm = [], float(K.global_norm(v))
    for c in (1e-2, 5e-3):  # ε = c/‖v‖ as in the meta driver: the perturbation θ±εv has norm c
        eps = c / v_norm
        gp = grad_phi(K.perturb(theta, v, eps))
        gm = grad_phi(K.perturb(theta, v, -eps))
        fd = K.combine([None] * len(gp), gp, gm, -1.0, eps)  # 0 − (−1)(g⁺ − g⁻)/2ε
        errors.append(float((torch.cat([f.reshape(-1) for f in fd]) - exact_flat).norm() / exact_flat.norm()))
    # central differences: error ≈ K c² (third derivatives of L, here K ≈ 1); halving c quarters it
    assert errors[0] < 1e-2 ** 2, errors
    assert errors[1] < errors[0] / 3, f"not second order in ε: {errors}"


# ------------------------------------------------------------------------------- the ulp comparison itself
def test_one_ulp_at_operand_scale_is_the_right_test_for_a_fused_axpy():
    """A correctly fused θ + α·v (one rounding) is not bit-equal to eager torch's, but is within 1 ulp at
    max(|θ|, |αv|); the bound still rejects genuinely wrong results."""
    g = torch.Generator().manual_seed(11)
    theta, v = torch.randn(65_733, generator=g), torch.randn(65_733, generator=g)
    alpha = 0.37
    a32 = float(torch.tensor(alpha, dtype=torch.float32))  # torch's opmath rounds α to fp32 too
    fused = (theta.double() + a32 * v.double()).float()  # exact product, fp64 sum, one rounding to fp32
    (ref,) = R.perturb([theta], [v], alpha)
    scale = torch.maximum(theta.double().abs(), (alpha * v.double()).abs())
    assert not torch.equal(fused, ref), "a fused result must be allowed to differ from eager torch"
    assert int((fused != ref).sum()) > 100
    assert max_ulp_distance(fused, ref, scale=scale) <= 1
    # measured at the result's own magnitude, cancellation makes the same rounding look like many ulps
    assert max_ulp_distance(fused, ref) > 1
    # sufficient, not lax: a wrong α (1e-6 relative) or a bf16-rounded direction are rejected
    assert max_ulp_distance((theta + alpha * (1 + 1e-6) * v), ref, scale=scale) > 1
    assert max_ulp_distance(theta + alpha * v.bfloat16().float(), ref, scale=scale) > 1
    assert float(ulp_distance(fused, ref, scale=scale).max()) == max_ulp_distance(fused, ref, scale=scale)


# --------------------------------------------------------------------------------------- table caching
def _count_uploads(monkeypatch) -> list:
    calls = []
    real = K._upload

    def counting(host, device):
        calls.append(host.shape)
        return real(host, device)

    monkeypatch.setattr(K, "_upload", counting)
    return calls


def test_tables_are_cached_and_never_stale(monkeypatch):
    K.clear_cache()
    uploads = _count_uploads(monkeypatch)
    th, v = randn(FD_SHAPES, torch.float32, 3), randn(FD_SHAPES, torch.float32, 4)
    out = [torch.empty_like(t) for t in th]
    K.perturb(th, v, 0.25, out=out)
    K.global_norm(v)
    first = len(uploads)
    assert first == 2, uploads  # one table per op (one dtype group each)
    for _ in range(2):
        K.perturb(th, v, 0.25, out=out)
        K.global_norm(v)
    assert len(uploads) == first, "a repeated call with the same tensors must not copy tables again"
    assert K.cache_info()["hits"] >= 4
    # new storage for one direction, not the list's base (the old one stays alive: a stale table would read it)
    k = max(range(len(v)), key=lambda i: v[i].data_ptr())  # the lowest address is the base: pick another
    v2 = list(v)
    v2[k] = torch.randn(v[k].shape, generator=torch.Generator().manual_seed(9)).to(DEV)
    K.perturb(th, v2, 0.25, out=out)
    assert perturb_ulps(out, th, v2, 0.25) <= 1
    assert rel(K.global_norm(v2), R.global_norm(v2)) < 1e-6
    assert len(uploads) == first + 2
    got = K.perturb(th, v2, 0.25, out=[torch.empty_like(t) for t in th])
    assert perturb_ulps(got, th, v2, 0.25) <= 1
    # the same sizes and dtypes at new addresses (a whole new list) are never served a stale table either
    th3 = [t * 2 for t in th]
    assert perturb_ulps(K.perturb(th3, v, -1.5), th3, v, -1.5) <= 1


def test_table_cache_is_bounded(monkeypatch):
    K.clear_cache()
    keep = [randn([(50,), (70,)], torch.float32, s) for s in range(K.CACHE_SIZE + 5)]
    for vs in keep:
        assert rel(K.global_norm(vs), R.global_norm(vs)) < 1e-6
    assert K.cache_info()["size"] == K.CACHE_SIZE


def test_one_launch_per_dtype_group(monkeypatch):
    launches = []
    real = K._launch
    monkeypatch.setattr(K, "_launch",
                        lambda kernel, plan, *a, **kw: (launches.append(kernel), real(kernel, plan, *a, **kw)))
    shapes = [(s,) for s in (5, 300, 17, 2000, 1, 64, 999, 33)]
    th = [t.to(torch.float16) if i % 2 else t for i, t in enumerate(randn(shapes, torch.float32, 5))]
    v = [t.to(torch.float16) if i % 3 == 0 else t for i, t in enumerate(randn(shapes, torch.float32, 6))]
    K.perturb(th, v, 0.5)
    assert len(launches) == len({(t.dtype, d.dtype) for t, d in zip(th, v)})  # 4 (θ, v) dtype pairs
    launches.clear()
    K.global_norm(th)
    assert len(launches) == 2


# -------------------------------------------------------------------------- unmasked chunks, masked tails
def guarded(sizes, dtype, values, guard, seed):
    """Views of ``sizes`` into one buffer, each 16-byte aligned and followed by guard elements (the last by a
    whole chunk, so an overrun reads and writes inside the buffer); returns (buffer, views, guard mask)."""
    align = 16 // torch.empty((), dtype=dtype).element_size()
    offsets, pos = [], 0
    for n in sizes:
        offsets.append(pos)
        pos = -(-(pos + n + 3 * align) // align) * align
    buf = torch.full((pos + C,), guard, dtype=dtype, device=DEV)
    is_guard = torch.ones(buf.numel(), dtype=torch.bool, device=DEV)
    views = []
    g = torch.Generator().manual_seed(seed)
    for o, n in zip(offsets, sizes):
        view = buf[o:o + n]
        view.copy_(torch.randn(n, generator=g).to(dtype) if values is None else torch.full((n,), values))
        is_guard[o:o + n] = False
        views.append(view)
    assert all(t.data_ptr() % 16 == 0 for t in views)  # the vectorised (aligned) path is the one under test
    return buf, views, is_guard


@contextlib.contextmanager
def guarded_outputs(monkeypatch):
    """Within the block, ``torch.empty`` *as the kernel module sees it* returns the head of a buffer whose
    tail (one chunk) holds -3.0; yields the list of (buffer, numel) to check afterwards."""
    made = []

    class Torch:
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def empty(shape, dtype=None, device=None, **kw):
            if kw:  # e.g. the pinned staging buffer of a table upload (CUDA): not an output
                return torch.empty(shape, dtype=dtype, device=device, **kw)
            n = torch.Size(shape).numel()
            buf = torch.full((n + C,), -3.0, dtype=dtype, device=device)
            buf[:n] = float("nan")
            made.append((buf, n))
            return buf[:n].view(shape)

    with monkeypatch.context() as m:
        m.setattr(K, "torch", Torch())
        yield made


@pytest.mark.parametrize("sizes", [[n] for n in TAIL_SIZES] + [TAIL_SIZES[::-1]],
                         ids=lambda s: "mixed" if len(s) > 1 else str(s[0]))
def test_every_element_written_and_nothing_outside(sizes, monkeypatch):
    _, th, _ = guarded(sizes, torch.float32, None, 7.0, 1)
    _, v, _ = guarded(sizes, torch.float32, None, 1e3, 2)
    obuf, out, oguard = guarded(sizes, torch.float32, float("nan"), -3.0, 0)
    K.perturb(th, v, 0.125, out=out)
    assert all(torch.isfinite(o).all() for o in out), "an element of a tail was not written"
    assert perturb_ulps(out, th, v, 0.125) <= 1
    assert (obuf[oguard] == -3.0).all(), "a store went past the end of a tensor"
    # the guards after each direction are 1e3: reading past a tensor's end would show in the norm
    assert rel(K.global_norm(v), R.global_norm(v)) < 1e-6
    with guarded_outputs(monkeypatch) as outs:  # combine allocates its outputs: give it guarded ones
        got = K.combine(th, v, [None] * len(v), 0.3, 1e-2)
    ref = R.combine(th, v, [None] * len(v), 0.3, 1e-2)
    assert all(torch.isfinite(g).all() for g in got) and max(rel(a, b) for a, b in zip(got, ref)) < 1e-6
    assert len(outs) == len(sizes) and all((buf[n:] == -3.0).all() for buf, n in outs), "combine wrote past an end"


def test_unaligned_views_take_the_scalar_path_correctly(monkeypatch):
    base = randn([(3 * C + 9,)], torch.float32, 8)[0]
    vbase = randn([(3 * C + 9,)], torch.float32, 9)[0]
    th = [base[1:C + 2], base[C + 8:2 * C + 8], base[2 * C + 9:3 * C + 8]]  # 4-byte, 16-byte and 4-byte aligned
    v = [vbase[4:C + 5], vbase[C + 8:2 * C + 8], vbase[2 * C + 9:3 * C + 8]]
    assert [t.data_ptr() % 16 == 0 for t in th] == [False, True, False]
    out = [torch.full_like(t, float("nan")) for t in th]
    vecs = []
    real = K._launch
    monkeypatch.setattr(K, "_launch", lambda kernel, plan, *a, **kw: (vecs.append((plan.chunks, kw.get("VEC_T"))),
                                                                      real(kernel, plan, *a, **kw)))
    K.perturb(th, v, -0.5, out=out)
    # the 16-byte promise is made only for the aligned tensor (on a GPU a false one faults or misreads)
    assert sorted(vecs) == [(1, 4), (3, 1)], vecs  # (chunks, VEC_T): C elements aligned; C+1 and C-1 not
    assert perturb_ulps(out, th, v, -0.5) <= 1
    assert rel(K.global_norm(th), R.global_norm(th)) < 1e-6
    assert len(vecs) == 4  # global_norm: one aligned and one unaligned group too
    got, ref = K.combine(th, v, th, 2.0, 0.5), R.combine(th, v, th, 2.0, 0.5)
    assert max(rel(a, b) for a, b in zip(got, ref)) < 1e-6


# ------------------------------------------------------------------------------------------ mixed dtypes
def test_mixed_dtype_lists():
    shapes = [(C + 3,), (40, 7), (5,), (C,)]
    th = [t.to(torch.float16) if i % 2 else t for i, t in enumerate(randn(shapes, torch.float32, 12))]
    v = randn(shapes, torch.float32, 13)
    got = K.perturb(th, v, 0.3)
    assert [g.dtype for g in got] == [t.dtype for t in th]
    assert perturb_ulps(got, th, v, 0.3) <= 1
    for xs in (th, v, th + v):
        n1, n2 = K.global_norm(xs), K.global_norm(xs)
        assert torch.equal(n1, n2), "global_norm must be deterministic"
        assert n1.dtype == R.global_norm(xs).dtype and rel(n1, R.global_norm(xs)) < 1e-6
    d = [t.to(torch.float16) for t in v]
    got, ref = K.combine(d, th, v, 0.5, torch.tensor(0.02, device=DEV)), R.combine(d, th, v, 0.5, 0.02)
    assert all(g.dtype == r.dtype == torch.float32 for g, r in zip(got, ref))
    assert max(rel(a, b) for a, b in zip(got, ref)) < 1e-6


@pytest.mark.skipif(not CUDA, reason="bf16 is not faithful under the Triton interpreter; needs a GPU")
def test_bf16_theta_with_fp32_direction():
    shapes = [(C * 3 + 17,), (512, 33), (7,)]
    th, v = randn(shapes, torch.bfloat16, 14), randn(shapes, torch.float32, 15)
    out = [torch.full_like(t, float("nan")) for t in th]
    for alpha in (1e-2, torch.tensor(-3e-3, device=DEV)):
        K.perturb(th, v, alpha, out=out)
        assert all(o.dtype == torch.bfloat16 for o in out)
        assert perturb_ulps(out, th, v, alpha) <= 1
    assert rel(K.global_norm(th), R.global_norm(th)) < 1e-6
    got, ref = K.combine(th, th, th, 0.5, 0.1), R.combine(th, th, th, 0.5, 0.1)
    assert max(rel(a, b) for a, b in zip(got, ref)) < 1e-6


@pytest.mark.skipif(not CUDA, reason="host synchronisation is a CUDA notion")
def test_no_host_synchronisation_on_cuda():
    th, v = randn(FD_SHAPES, torch.float32, 16), randn(FD_SHAPES, torch.float32, 17)
    eps = torch.tensor(1e-3, device=DEV)
    K.perturb(th, v, eps), K.global_norm(v), K.combine(v, th, v, 0.1, eps)  # compile outside the check
    torch.cuda.synchronize()
    v2 = [t.clone() for t in v]  # new pointers: tables are built and uploaded inside the check
    torch.cuda.set_sync_debug_mode("error")  # from here any host synchronisation raises RuntimeError
    try:
        with pytest.raises(RuntimeError):
            float(eps)  # the guard is live: a sync does raise
        for vs in (v2, v2):
            out = K.perturb(th, vs, eps)
            K.perturb(th, vs, -eps, out=out)
            K.combine(vs, th, out, 0.1, eps)
            K.global_norm(vs)
            K.perturb(th, vs, 0.5)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_strided_tensors_work_like_the_reference():
    """The reference accepts strided tensors (so the dispatcher never falls back on them): so must the kernels."""
    th = [t.t() for t in randn([(300, 70), (9, 5)], torch.float32, 20)]
    v = [t[:, ::2] for t in randn([(70, 600), (5, 18)], torch.float32, 21)]
    out = [torch.full((300, 140), float("nan"), device=DEV).t()[::2], torch.full((5, 9), float("nan"), device=DEV)]
    assert not any(t.is_contiguous() for t in th + v + out[:1])
    res = K.perturb(th, v, 0.7, out=out)
    assert all(r is o for r, o in zip(res, out)) and perturb_ulps(out, th, v, 0.7) <= 1
    assert perturb_ulps(K.perturb(th, v, 0.7), th, v, 0.7) <= 1
    assert rel(K.global_norm(v), R.global_norm(v)) < 1e-6
    got, ref = K.combine(th, v, [None, v[1]], 0.2, 0.1), R.combine(th, v, [None, v[1]], 0.2, 0.1)
    assert max(rel(a, b) for a, b in zip(got, ref)) < 1e-6


def test_bad_inputs_are_refused():
    th, v = randn([(4,), (6,)], torch.float32, 18), randn([(4,), (6,)], torch.float32, 19)
    with pytest.raises(ValueError, match="empty"):
        K.global_norm([])
    with pytest.raises(ValueError, match="θ tensors"):
        K.perturb(th, v[:1], 0.1)
    with pytest.raises(ValueError, match="shape"):
        K.perturb(th, v[::-1], 0.1)
    with pytest.raises(ValueError, match="scalar"):
        K.perturb(th, v, torch.ones(2, device=DEV))
    with pytest.raises(ValueError, match="same length"):
        K.combine(th, v, v[:1], 1.0, 1.0)
    with pytest.raises(ValueError, match="differ"):
        K.combine([th[0]], [v[1]], [None], 1.0, 1.0)
    assert K.perturb([], [], 0.1) == [] and K.combine([], [], [], 1.0, 1.0) == []
    empty = [torch.empty(0, device=DEV), torch.ones(3, device=DEV)]
    assert float(K.global_norm(empty)) == pytest.approx(3 ** 0.5)
    assert [t.shape for t in K.perturb(empty, empty, 1.0)] == [(0,), (3,)]
