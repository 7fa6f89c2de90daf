"""Plain-torch reference of the residual bottleneck adapter (Wang et al. 2020, Appendix B; Houlsby et al. 2019).

    h = g(x W_down^T + b_down),   y = x + h W_up^T + b_up

with g = GELU (or ReLU) and bottleneck b = d/4 by default. Fused Triton kernels must match this.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
    if activation not in ("gelu", "relu"):
        raise ValueError(f"activation must be 'gelu' or 'relu', got {activation!r}")
    d = x.shape[-1]
    if w_down.shape[1] != d or w_up.shape != (d, w_down.shape[0]) or b_down.shape != (w_down.shape[0],) \
            or b_up.shape != (d,):
        raise ValueError(f"adapter shapes do not match: x (..., {d}), w_down {tuple(w_down.shape)}, "
                         f"b_down {tuple(b_down.shape)}, w_up {tuple(w_up.shape)}, b_up {tuple(b_up.shape)}")
    h = F.linear(x, w_down, b_down)
    h = F.gelu(h) if activation == "gelu" else F.relu(h)
    return x + F.linear(h, w_up, b_up)
