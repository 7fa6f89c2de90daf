"""Which implementation runs: Triton on CUDA by default, the plain-torch reference elsewhere.

``NEGINT_DS_KERNELS``: ``auto`` (default; Triton for CUDA tensors), ``triton`` (always; on CPU this needs
``TRITON_INTERPRET=1`` set before the kernels are imported, as the tests do) or ``torch`` (never).

Inside :func:`reference_only` the reference always runs: second-order autograd (the exact meta
hypergradient) needs a twice-differentiable adapter, which the fused backward is not.

In ``auto`` mode the first CUDA call for each (op, dtype, shape class) compares the Triton result with
the reference on a small random input (forward and gradients); on a mismatch it warns once and uses
the reference for that configuration from then on. This catches a kernel that is wrong on a GPU it has
not run on before; it cannot catch a fault that only large inputs trigger.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading

import torch

from . import fd_hvp_reference
from .adapter_reference import bottleneck_adapter_reference

log = logging.getLogger("negint_ds.kernels")
_state = threading.local()
_verified: dict[tuple, bool] = {}


def mode() -> str:
    """``auto``, ``triton`` or ``torch`` from ``NEGINT_DS_KERNELS``.

    Raises:
        ValueError: any other value.
    """
    m = os.environ.get("NEGINT_DS_KERNELS", "auto").lower()
    if m not in ("auto", "triton", "torch"):
        raise ValueError(f"NEGINT_DS_KERNELS must be auto, triton or torch, got {m!r}")
    return m


@contextlib.contextmanager
def reference_only():
    """Run the plain-torch reference inside this block (e.g. for double backward)."""
    prev = getattr(_state, "reference_only", False)
    _state.reference_only = True
    try:
        yield
    finally:
        _state.reference_only = prev


def _use_triton(t: torch.Tensor) -> bool:
    if getattr(_state, "reference_only", False):
        return False
    m = mode()
    if m == "torch":
        return False
    if m == "triton":
        return True
    return t.is_cuda and _triton_importable()


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _adapter_ok(x, w_down, activation) -> bool:
    """One-time check of the fused adapter against the reference for this dtype/shape class (auto mode)."""
    key = ("adapter", x.dtype, x.shape[-1], w_down.shape[0], activation, x.device.type)
    if mode() != "auto" or key in _verified:
        return _verified.get(key, True)
    from .adapter_triton import bottleneck_adapter_triton

    g = torch.Generator(device=x.device).manual_seed(0)
    d, b = x.shape[-1], w_down.shape[0]
    args = [torch.randn(s, generator=g, device=x.device, dtype=x.dtype) * sc for s, sc in
            (((96, d), 1.0), ((b, d), d ** -0.5), ((b,), 0.1), ((d, b), b ** -0.5), ((d,), 0.1))]
    dy = torch.randn(96, d, generator=g, device=x.device, dtype=x.dtype)
    outs = []
    with torch.inference_mode(False), torch.enable_grad():  # the first call may come from evaluation
        for fn in (bottleneck_adapter_triton, bottleneck_adapter_reference):
            leaves = [a.clone().requires_grad_(True) for a in args]
            y = fn(*leaves, activation)
            outs.append([y, *torch.autograd.grad(y, leaves, dy)])
    tol = 1e-4 if x.dtype == torch.float32 else 2e-2
    errs = [_rel(a, r) for a, r in zip(*outs)]
    ok = all(e <= tol for e in errs)
    if not ok:
        log.warning("fused adapter disagrees with the reference for %s (relative errors %s); using the torch "
                    "reference for this configuration", key, [f"{e:.1e}" for e in errs])
    _verified[key] = ok
    return ok


def bottleneck_adapter(x: torch.Tensor, w_down: torch.Tensor, b_down: torch.Tensor, w_up: torch.Tensor,
                       b_up: torch.Tensor, activation: str = "gelu") -> torch.Tensor:
    """y = x + W_up g(W_down x + b_down) + b_up: the fused Triton kernel where it applies, else the reference.

    Where the kernel applies is decided by :func:`negint_ds.kernels.adapter_triton.unsupported`.
    """
    if _use_triton(x):
        from .adapter_triton import bottleneck_adapter_triton, unsupported

        if unsupported(x, w_down, b_down, w_up, b_up, activation) is None and _adapter_ok(x, w_down, activation):
            return bottleneck_adapter_triton(x, w_down, b_down, w_up, b_up, activation)
    return bottleneck_adapter_reference(x, w_down, b_down, w_up, b_up, activation)


def fd_ops(device: torch.device | str):
    """The finite-difference HVP ops for tensors on ``device``: the Triton module or the reference module."""
    probe = torch.empty(0, device=device)
    if _use_triton(probe) and _fd_ok(probe.device):
        from . import fd_hvp_triton

        return fd_hvp_triton
    return fd_hvp_reference


def _fd_ok(device: torch.device) -> bool:
    key = ("fd", device.type)
    if mode() != "auto" or key in _verified:
        return _verified.get(key, True)
    from . import fd_hvp_triton as K

    g = torch.Generator(device=device).manual_seed(0)
    v = [torch.randn(s, generator=g, device=device) for s in ((7,), (300, 41), (70001,))]
    R = fd_hvp_reference
    errs = [_rel(K.global_norm(v), R.global_norm(v))]
    for dt in (torch.float32, torch.float16) + ((torch.bfloat16,) if device.type == "cuda" else ()):
        th = [t.to(dt) for t in v[::-1]][::-1]
        errs += [_rel(a, b) for a, b in zip(K.perturb(th, v, 0.3), R.perturb(th, v, 0.3))]
        errs += [_rel(a, b) for a, b in zip(K.combine(v, th, v, 0.5, 1e-2), R.combine(v, th, v, 0.5, 1e-2))]
    ok = all(e <= 1e-5 for e in errs)
    if not ok:
        log.warning("fused finite-difference kernels disagree with the reference on %s (relative errors up to "
                    "%.1e); using the reference", device, max(errs))
    _verified[key] = ok
    return ok
