"""Plain-torch reference of the residual bottleneck adapter (Wang et al. 2020, Appendix B; Houlsby et al. 2019).

    h = g(x W_down^T + b_down),   y = x + h W_up^T + b_up

with g = GELU (or ReLU) and bottleneck b = d/4 by default. Fused Triton kernels must match this.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def check_adapter_args(x: torch.Tensor, w_down: torch.Tensor, b_down: torch.Tensor, w_up: torch.Tensor,
                       b_up: torch.Tensor, activation: str) -> None:
    """The adapter's argument rules, shared by every implementation (reference, fused kernel, GEMM chain).

    Raises:
        ValueError: an activation other than gelu/relu, or shapes other than x (..., d), W_down (b, d),
            b_down (b,), W_up (d, b), b_up (d,).
    """
    if activation not in ("gelu", "relu"):
        raise ValueError(f"activation must be 'gelu' or 'relu', got {activation!r}")
    d = x.shape[-1] if x.dim() else None
    if d is None or w_down.dim() != 2 or w_down.shape[1] != d or w_up.shape != (d, w_down.shape[0]) \
            or b_down.shape != (w_down.shape[0],) or b_up.shape != (d,):
        raise ValueError(f"adapter shapes do not match: x (..., {d}), w_down {tuple(w_down.shape)}, "
                         f"b_down {tuple(b_down.shape)}, w_up {tuple(w_up.shape)}, b_up {tuple(b_up.shape)}")


def bottleneck_adapter_reference(x: torch.Tensor, w_down: torch.Tensor, b_down: torch.Tensor, w_up: torch.Tensor,
                                 b_up: torch.Tensor, activation: str = "gelu") -> torch.Tensor:
    """Residual bottleneck adapter.

    Args:
        x: (..., d) activations.
        w_down: (b, d), b_down: (b,) down-projection.
        w_up: (d, b), b_up: (d,) up-projection.
        activation: ``"gelu"`` (exact erf form) or ``"relu"``.

    Returns:
        (..., d) tensor of ``x``'s dtype.

    Raises:
        ValueError: unknown activation or mismatched shapes.
    """
    check_adapter_args(x, w_down, b_down, w_up, b_up, activation)
    h = F.linear(x, w_down, b_down)
    h = F.gelu(h) if activation == "gelu" else F.relu(h)
    return x + F.linear(h, w_up, b_up)


def bottleneck_adapter_backward_reference(x: torch.Tensor, dy: torch.Tensor, w_down: torch.Tensor,
                                          b_down: torch.Tensor, w_up: torch.Tensor, activation: str = "gelu",
                                          needs: tuple[bool, ...] = (True,) * 5) -> tuple:
    """Closed-form gradients of :func:`bottleneck_adapter_reference` (no autograd graph needed).

    With z = x W_downᵀ + b_down, h = g(z): db_up = Σ dy, dW_up = dyᵀ h, dz = (dy W_up) ⊙ g'(z),
    dW_down = dzᵀ x, db_down = Σ dz, dx = dy + dz W_down (g' through ``aten.gelu_backward`` /
    ``aten.threshold_backward``, the ops autograd runs for the reference).
    Computed in fp32 (fp64 for fp64) and returned in x's dtype. Used where autograd is not running (inside
    the custom op's backward) and as the backward's plain-torch reference.

    Args:
        x, dy: (..., d). w_down (b, d), b_down (b,), w_up (d, b).
        needs: which of (dx, dW_down, db_down, dW_up, db_up) to return; the others are None.

    Returns:
        (dx (..., d), dW_down (b, d), db_down (b,), dW_up (d, b), db_up (d,)).
    """
    acc = torch.promote_types(x.dtype, torch.float32)
    d = x.shape[-1]
    x2, dy2 = x.reshape(-1, d).to(acc), dy.reshape(-1, d).to(acc)
    wd, wu = w_down.to(acc), w_up.to(acc)
    z = F.linear(x2, wd, b_down.to(acc))
    dh = dy2 @ wu
    if activation == "gelu":  # the derivative kernels autograd runs for F.gelu / F.relu
        h, dz = F.gelu(z), torch.ops.aten.gelu_backward(dh, z, approximate="none")
    elif activation == "relu":
        h = F.relu(z)
        dz = torch.ops.aten.threshold_backward(dh, h, 0)
    else:
        raise ValueError(f"activation must be 'gelu' or 'relu', got {activation!r}")
    out = [(dy2 + dz @ wd).reshape(x.shape) if needs[0] else None,
           dz.t() @ x2 if needs[1] else None, dz.sum(0) if needs[2] else None,
           dy2.t() @ h if needs[3] else None, dy2.sum(0) if needs[4] else None]
    return tuple(t.to(x.dtype) if t is not None else None for t in out)
