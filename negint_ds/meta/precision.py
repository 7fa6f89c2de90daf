"""fp32 values of θ and φ for the meta step (``meta.precision: fp32``), whatever the training precision.

Why: in bf16 the virtual step θ − βg (β ≈ the learning rate) and the probes θ ± εv change θ by far less
than one bf16 ulp, so when θ', θ⁺, θ⁻ are rounded to bf16 the Eq. 8 quotient measures rounding: on small
models it had 46–57% relative error and the β-dependent part of the hypergradient was 9× off (README,
"Precision of the meta step"). Forming them from fp32 values and running those passes with fp32 parameters
removes that error.

θ's fp32 values are, in order of preference:

1. DeepSpeed's fp32 master weights through their high-precision mapping (ZeRO 1–2 and DeepSpeed's bf16
   optimizer: each rank holds a partition; one all-reduce per bucket assembles the whole θ on every rank);
2. the fp32 groups of DeepSpeed's ZeRO-0 fp16/bf16 optimizers (``fp16_groups`` / ``fp32_groups``);
3. an fp32 copy of the module's working weights (then θ itself is the bf16 value, but θ', θ± keep every
   digit of βg and εv).

φ's fp32 values are the per-language optimiser's fp32 masters (:class:`~negint_ds.phi_optim.LanguageOptimizer`).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..params import ParamSplit
from ..train.dist import all_reduce_
from .state import MetaParams

def _hp_masters(params: list[torch.nn.Parameter]) -> list[torch.Tensor] | None:
    """Whole fp32 masters from DeepSpeed's per-parameter high-precision mapping (a collective), or None."""
    if not params or not all(hasattr(p, "_hp_mapping") for p in params):
        return None
    out = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in params]
    for p, o in zip(params, out):
        m = p._hp_mapping
        if m is not None:  # this rank's fragment; the others are zero here and summed in below
            a = m.lp_fragment_address
            o.view(-1).narrow(0, a.start, a.numel).copy_(m.get_hp_fragment().reshape(-1))
    group = getattr(params[0], "_dp_group", None)
    if dist.is_initialized():  # each element is held by one rank, zero elsewhere: the sum assembles θ
        all_reduce_(out, dist.get_world_size(group), mean=False, group=group)
    return out


def _group_masters(optimizer, params: list[torch.nn.Parameter]) -> list[torch.Tensor] | None:
    """fp32 masters of DeepSpeed's ZeRO-0 fp16/bf16 optimizers (``fp16_groups`` aligned with ``fp32_groups``)."""
    lp, hp = getattr(optimizer, "fp16_groups", None), getattr(optimizer, "fp32_groups", None)
    if not isinstance(lp, list) or not isinstance(hp, list) or len(lp) != len(hp):
        return None
    index = {}
    for lg, hg in zip(lp, hp):
        if not isinstance(lg, list) or not isinstance(hg, list) or len(lg) != len(hg):
            return None
        index.update({id(a): b for a, b in zip(lg, hg)})
    masters = [index.get(id(p)) for p in params]
    if any(m is None or m.shape != p.shape or m.dtype != torch.float32 for m, p in zip(masters, params)):
        return None
    return [m.detach() for m in masters]


def fp32_theta(engine, split: ParamSplit) -> tuple[list[torch.Tensor], str]:
    """θ in fp32 (fp64 stays fp64), with where the values came from.

    A collective when the masters are partitioned (ZeRO 1–2): call on every rank.

    Returns:
        (one tensor per θ parameter in ``split.theta`` order, a short description of the source).
    """
    params = list(split.theta.values())
    if all(p.dtype in (torch.float32, torch.float64) for p in params):
        return [p.detach() for p in params], f"module ({params[0].dtype}, the training precision)"
    masters = _hp_masters(params)
    if masters is not None:
        return masters, "DeepSpeed fp32 master weights (ZeRO high-precision mapping)"
    masters = _group_masters(getattr(engine, "optimizer", None), params)
    if masters is not None:
        return masters, "DeepSpeed fp32 master weights (optimizer fp32 groups)"
    return [p.detach().float() for p in params], f"fp32 copy of the {params[0].dtype} working weights"


def meta_params(engine, split: ParamSplit, phi_masters: list[list[torch.Tensor]], precision: str) -> MetaParams:
    """The :class:`MetaParams` of one meta step for ``meta.precision`` (``fp32`` or ``working``).

    Args:
        engine: the DeepSpeed engine (``engine.module`` holds θ and φ in the working precision).
        split: θ/φ split of ``engine.module``.
        phi_masters: per language, φ_j's fp32 masters (same order as ``split.phi[j]``).
        precision: ``fp32`` or ``working``.

    Raises:
        ValueError: unknown ``precision``.
    """
    if precision == "working":
        return MetaParams.from_module(engine.module, split)
    if precision != "fp32":
        raise ValueError(f"meta.precision must be 'fp32' or 'working', got {precision!r}")
    theta, source = fp32_theta(engine, split)
    return MetaParams(list(split.theta), theta, [list(phi) for phi in split.phi],
                      [[m.detach() for m in ms] for ms in phi_masters], source=source)


__all__ = ["fp32_theta", "meta_params"]
