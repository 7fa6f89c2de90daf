"""Which implementation runs: Triton on CUDA by default, the plain-torch reference elsewhere.

``NEGINT_DS_KERNELS``: ``auto`` (default; Triton for CUDA tensors), ``triton`` (always; on CPU this needs
``TRITON_INTERPRET=1`` set before the kernels are imported, as the tests do) or ``torch`` (never). The
variable is read once, when this module is imported; :func:`configure` re-reads it (or sets a mode) and must
be called before models are built or compiled — a traced graph keeps the mode it was traced with.

Inside :func:`reference_only` the reference always runs: second-order autograd (the exact meta
hypergradient) needs a twice-differentiable adapter, which the fused backward is not.

**torch.compile.** The fused adapter is a ``torch.library`` custom op (:mod:`.adapter_op`): dynamo records
one opaque node per adapter (no graph break) and the choice below happens inside the op, at run time.

**Safety in auto mode.** Before the first Triton use of an (op, dtype, shape class, device) the result is
compared with the reference on a small random input (forward and every gradient; :func:`self_check` runs these
at set-up, before any graph is traced). A mismatch, or any compile or launch error then or later, logs one
warning and the reference runs for that configuration from then on. This catches a kernel that is wrong or
does not fit on a GPU it has not run on before; it cannot catch a fault that only large inputs trigger.
Comparisons are FMA-aware: elementwise ops within 1 ulp at their operands' magnitude (``FD_TOLERANCE``, :mod:`.ulp`), matmul
outputs by relative norm.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterable, Sequence

import torch

from . import fd_hvp_reference
from .adapter_reference import bottleneck_adapter_reference
from .ulp import max_ulp_distance

log = logging.getLogger("negint_ds.kernels")
_MODES = ("auto", "triton", "torch")
_verified: dict[tuple, bool] = {}
_reference_depth = 0  # a plain global (not threading.local): dynamo guards on it instead of breaking the graph


def _read_mode(value: str | None) -> str:
    m = (value if value is not None else os.environ.get("NEGINT_DS_KERNELS", "auto")).lower()
    if m not in _MODES:
        raise ValueError(f"NEGINT_DS_KERNELS must be auto, triton or torch, got {m!r}")
    return m


_MODE = _read_mode(None)


def configure(mode: str | None = None) -> str:
    """Set the kernel mode (``mode``, or ``NEGINT_DS_KERNELS`` re-read when None) and return it.

    Raises:
        ValueError: a value other than auto, triton or torch.
    """
    global _MODE
    _MODE = _read_mode(mode)
    return _MODE


def mode() -> str:
    """The mode in force: ``auto``, ``triton`` or ``torch`` (see :func:`configure`)."""
    return _MODE


@contextlib.contextmanager
def reference_only():
    """Run the plain-torch reference inside this block (e.g. for double backward)."""
    global _reference_depth
    _reference_depth += 1
    try:
        yield
    finally:
        _reference_depth -= 1


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _fail(key: tuple, what: str) -> bool:
    if _verified.get(key) is not False:
        log.warning("%s; using the torch reference for %s from now on", what, key)
    _verified[key] = False
    return False


# ------------------------------------------------------------------------------------------ bottleneck adapter
def _adapter_key(x: torch.Tensor, w_down: torch.Tensor, activation: str) -> tuple:
    return ("adapter", x.dtype, x.shape[-1], w_down.shape[0], activation, str(x.device))


def adapter_uses_triton(x, w_down, b_down, w_up, b_up, activation) -> bool:
    """Whether the fused kernel runs for these inputs (mode, device, eligibility, the self-check).

    In ``triton`` mode ineligible inputs raise (an explicit request must not be silently ignored); in
    ``auto`` mode they use the reference.

    Raises:
        ValueError: ``triton`` mode and inputs the kernel cannot take.
    """
    if _reference_depth or _MODE == "torch":
        return False
    from .adapter_triton import unsupported

    if _MODE == "triton":
        why = unsupported(x, w_down, b_down, w_up, b_up, activation)
        if why is not None:
            raise ValueError(why)
        return True
    if not _fused_device(x) or unsupported(x, w_down, b_down, w_up, b_up, activation):
        return False
    return _adapter_ok(x, w_down, activation)


def _fused_device(t: torch.Tensor) -> bool:
    """Auto mode runs Triton on CUDA tensors only (tests point this at the CPU interpreter)."""
    return t.is_cuda and _triton_importable()


def _adapter_ok(x, w_down, activation) -> bool:
    """One-time check of the fused adapter against the reference for this dtype/shape class (auto mode)."""
    key = _adapter_key(x, w_down, activation)
    if _MODE != "auto" or key in _verified:
        return _verified.get(key, True)
    from . import adapter_triton

    g = torch.Generator(device=x.device).manual_seed(0)
    d, b = x.shape[-1], w_down.shape[0]
    args = [torch.randn(s, generator=g, device=x.device, dtype=x.dtype) * sc for s, sc in
            (((96, d), 1.0), ((b, d), d ** -0.5), ((b,), 0.1), ((d, b), b ** -0.5), ((d,), 0.1))]
    dy = torch.randn(96, d, generator=g, device=x.device, dtype=x.dtype)
    outs = []
    try:
        with torch.inference_mode(False), torch.enable_grad():  # the first call may come from evaluation
            for fn in (adapter_triton.bottleneck_adapter_triton, bottleneck_adapter_reference):
                leaves = [a.clone().requires_grad_(True) for a in args]
                y = fn(*leaves, activation)
                outs.append([y, *torch.autograd.grad(y, leaves, dy)])
    except Exception as e:  # noqa: BLE001 - any compile/launch failure means: do not use the kernel here
        return _fail(key, f"fused adapter failed to compile or launch ({type(e).__name__}: {e})")
    tol = 1e-4 if x.dtype == torch.float32 else 2e-2
    errs = [_rel(a, r) for a, r in zip(*outs)]
    if not all(e <= tol for e in errs):
        return _fail(key, f"fused adapter disagrees with the reference (relative errors "
                          f"{[f'{e:.1e}' for e in errs]}, allowed {tol:.0e})")
    _verified[key] = True
    return True


def adapter_launch_failed(x, w_down, activation, err: Exception) -> None:
    """Record a compile/launch error of the fused adapter (auto mode: warn once, use the reference after).

    Raises:
        Exception: ``err`` itself outside auto mode (an explicit ``triton`` request must not be masked).
    """
    if _MODE != "auto":
        raise err
    _fail(_adapter_key(x, w_down, activation), f"fused adapter failed at launch ({type(err).__name__}: {err})")


def bottleneck_adapter(x: torch.Tensor, w_down: torch.Tensor, b_down: torch.Tensor, w_up: torch.Tensor,
                       b_up: torch.Tensor, activation: str = "gelu") -> torch.Tensor:
    """y = x + W_up g(W_down x + b_down) + b_up (paper Appendix B): the fused kernel where it applies.

    Shapes: x (..., d); W_down (b, d), b_down (b,), W_up (d, b), b_up (d,). Returns (..., d) of x's dtype.
    On CPU in auto mode, in torch mode and inside :func:`reference_only` this is the reference itself (twice
    differentiable); otherwise the ``negint_ds::bottleneck_adapter`` custom op, which picks the Triton kernel
    or the reference at run time (:func:`adapter_uses_triton`) and is once differentiable.

    Raises:
        ValueError: mismatched shapes or an unknown activation; in ``triton`` mode, inputs the kernel cannot take.
    """
    if _reference_depth or _MODE == "torch" or (_MODE == "auto" and not _fused_device(x)):
        return bottleneck_adapter_reference(x, w_down, b_down, w_up, b_up, activation)
    if _MODE == "auto" and _choice.get(_adapter_key(x, w_down, activation)) == "gemm_chain":
        from .adapter_gemm_chain import bottleneck_adapter_gemm_chain

        return bottleneck_adapter_gemm_chain(x, w_down, b_down, w_up, b_up, activation)
    from . import adapter_op  # registers the op on first use

    return adapter_op.bottleneck_adapter_op(x, w_down, b_down, w_up, b_up, activation)


LARGE_D = 1024  # from here the adapter is compute-bound in 16-bit (kernels/bench/roofline.py): time the options
_choice: dict[tuple, str] = {}  # adapter key → "triton" | "gemm_chain", decided by measurement at set-up


def _gpu_ms(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def choose_by_time(key: tuple, x: torch.Tensor, weights: Sequence[torch.Tensor], activation: str,
                   timer=_gpu_ms, tokens: int = 8192) -> str:
    """Time forward+backward of the fused kernel and the GEMM-epilogue chain on (tokens, d); keep the faster.

    Args:
        key: the adapter key the choice is stored under (see :func:`bottleneck_adapter`).
        x, weights: example tensors of the adapter's dtype and device (only shapes, dtype, device are used).
        timer: ``fn → milliseconds`` (``triton.testing.do_bench`` on a GPU; tests inject their own).

    Returns:
        ``"triton"`` or ``"gemm_chain"`` (also stored for :func:`bottleneck_adapter`).
    """
    from . import adapter_triton
    from .adapter_gemm_chain import bottleneck_adapter_gemm_chain

    g = torch.Generator(device=x.device).manual_seed(0)
    d, b = x.shape[-1], weights[0].shape[0]
    leaves = [(torch.randn(s, generator=g, device=x.device, dtype=x.dtype) * sc).requires_grad_(True) for s, sc in
              (((tokens, d), 1.0), ((b, d), d ** -0.5), ((b,), 0.1), ((d, b), b ** -0.5), ((d,), 0.1))]
    dy = torch.randn(tokens, d, generator=g, device=x.device, dtype=x.dtype)

    def run(fn):
        return lambda: torch.autograd.grad(fn(*leaves, activation), leaves, dy)

    with torch.inference_mode(False), torch.enable_grad():
        times = {"triton": timer(run(adapter_triton.bottleneck_adapter_triton)),
                 "gemm_chain": timer(run(bottleneck_adapter_gemm_chain))}
    best = min(times, key=times.get)
    _choice[key] = best
    log.info("adapter d=%d b=%d %s: %s (forward+backward ms: %s)", d, b, x.dtype, best,
             ", ".join(f"{k} {v:.3f}" for k, v in times.items()))
    return best


def self_check(shapes: Iterable[tuple[int, int, str]], dtype: torch.dtype, device: torch.device | str) -> dict:
    """Run the auto-mode checks now (at set-up, before any graph is traced) for adapters of these shapes.

    From d = :data:`LARGE_D` (compute-bound) the fused kernel and the GEMM-epilogue chain are also timed and
    the faster is used (:func:`choose_by_time`).

    Args:
        shapes: (d, b, activation) of each distinct adapter.
        dtype: the dtype the adapters will run in.
        device: their device.

    Returns:
        {(d, b, activation): True if the fused kernel will run, False if the reference or GEMM chain will}.
    """
    out = {}
    for d, b, act in dict.fromkeys(shapes):
        x = torch.zeros(1, d, dtype=dtype, device=device)
        w = [torch.zeros(*s, dtype=dtype, device=device) for s in ((b, d), (b,), (d, b), (d,))]
        out[(d, b, act)] = adapter_uses_triton(x, *w, act)
        key = _adapter_key(x, w[0], act)
        if out[(d, b, act)] and _MODE == "auto" and d >= LARGE_D and key not in _choice and x.is_cuda:
            out[(d, b, act)] = choose_by_time(key, x, w, act) == "triton"
    return out


# -------------------------------------------------------------------------------- finite-difference HVP ops
class _CheckedFdOps:
    """The Triton FD-HVP ops with the reference as a fallback on any compile or launch error (auto mode)."""

    acc_dtype = staticmethod(fd_hvp_reference.acc_dtype)

    def __init__(self, kernels, key: tuple):
        self._k, self._key = kernels, key

    def _call(self, name: str, *args, **kwargs):
        if _verified.get(self._key) is not False:
            try:
                return getattr(self._k, name)(*args, **kwargs)
            except ValueError:
                raise  # bad arguments: the reference would refuse them too
            except Exception as e:  # noqa: BLE001
                _fail(self._key, f"fused finite-difference {name} failed ({type(e).__name__}: {e})")
        return getattr(fd_hvp_reference, name)(*args, **kwargs)

    def global_norm(self, tensors):
        return self._call("global_norm", tensors)

    def perturb(self, theta, v, alpha, out=None):
        return self._call("perturb", theta, v, alpha, out=out)

    def combine(self, direct, g_plus, g_minus, beta, eps):
        return self._call("combine", direct, g_plus, g_minus, beta, eps)


def fd_ops(device: torch.device | str):
    """The finite-difference HVP ops for tensors on ``device`` (paper Eq. 8): Triton or the reference.

    Auto mode on CUDA returns the Triton ops behind a fallback guard after a one-time self-check;
    ``triton`` mode returns the Triton module itself (errors propagate); otherwise the reference module.
    """
    probe = torch.empty(0, device=device)
    if _reference_depth or _MODE == "torch":
        return fd_hvp_reference
    if _MODE == "triton":
        from . import fd_hvp_triton

        return fd_hvp_triton
    if not _fused_device(probe) or not _fd_ok(probe.device):
        return fd_hvp_reference
    from . import fd_hvp_triton

    return _CheckedFdOps(fd_hvp_triton, ("fd", str(probe.device)))


def fd_check_errors(kernels, reference, device: torch.device, dtypes: Sequence[torch.dtype]) -> dict[str, float]:
    """Errors of the fused FD ops against the reference on a fixed random input, keyed by op and dtype.

    ``perturb`` in ulps at max(|θ|, |α v|) (one fused multiply-add vs two roundings: see ``FD_TOLERANCE``);
    ``global_norm`` and ``combine`` as relative norm errors (fp32 accumulation, reduction order may differ).
    """
    g = torch.Generator(device=device).manual_seed(0)
    v = [torch.randn(s, generator=g, device=device) for s in ((7,), (300, 41), (70001,))]
    errs = {"global_norm": _rel(kernels.global_norm(v), reference.global_norm(v))}
    theta = [torch.randn(t.shape, generator=g, device=device) for t in v]  # independent of v: θ − 0.3v cancels
    for dt in dtypes:
        th = [t.to(dt) for t in theta]
        for a, b, t, d in zip(kernels.perturb(th, v, -0.3), reference.perturb(th, v, -0.3), th, v):
            scale = torch.maximum(t.double().abs(), 0.3 * d.double().abs())
            errs[f"perturb {dt}"] = max(errs.get(f"perturb {dt}", 0.0), max_ulp_distance(a, b, scale))
        errs[f"combine {dt}"] = max(_rel(a, b) for a, b in zip(kernels.combine(v, th, v, 0.5, 1e-2),
                                                                reference.combine(v, th, v, 0.5, 1e-2)))
    return errs


# θ + αv fused (one rounding) and eager (product rounded, then the sum): ≤ 1 ulp at max(|θ|, |αv|) when both use
# the same fp32 α (a Python float reaches a Triton kernel, and an fp32 torch op, as fp32)
FD_TOLERANCE = {"global_norm": 1e-5, "perturb": 1.0, "combine": 1e-5}


def _fd_ok(device: torch.device) -> bool:
    key = ("fd", str(device))
    if _MODE != "auto" or key in _verified:
        return _verified.get(key, True)
    dtypes = (torch.float32, torch.float16) + ((torch.bfloat16,) if device.type == "cuda" else ())
    try:
        from . import fd_hvp_triton

        errs = fd_check_errors(fd_hvp_triton, fd_hvp_reference, device, dtypes)
    except Exception as e:  # noqa: BLE001
        return _fail(key, f"fused finite-difference kernels failed to compile or launch ({type(e).__name__}: {e})")
    bad = {k: e for k, e in errs.items() if not e <= FD_TOLERANCE[k.split()[0]]}
    if bad:
        return _fail(key, f"fused finite-difference kernels disagree with the reference ({bad}; perturb in ulps)")
    _verified[key] = True
    return True
