"""How faithful is a hypergradient? Compare the finite-difference / exact ∇φ_i F computed in a training
precision with an fp64 double-backward reference at the same point (Eq. 3–4; Eq. 8).

Reported for the whole hypergradient, for its second-order part alone (−β H·v, the term Eq. 8
approximates) and for its β-dependent part (∇φF(β) − ∇φF(0): the second-order term plus the move of the
direct term from θ to θ'): cosine similarity and relative error ‖cand − ref‖/‖ref‖. Usable from tests
(:func:`measure`) and from the command line::

    python -m negint_ds.fidelity --config jointpair_en_sw_meta_adpt_demo --dtype bf16
    python -m negint_ds.fidelity --run_dir runs/jointpair_en_sw_meta_adpt_demo --dtype bf16 --emulate_tf32
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch

from ..model import MaskedLM
from ..params import split_parameters
from .hypergrad import hypergradient
from .objective import plain_copy
from .passes import math_sdpa
from .state import Hypergradient, MetaInputs, MetaParams
from .tf32 import emulate_tf32

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


def _flat(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().double().reshape(-1) for t in ts])


def agreement(candidate: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> dict:
    """{"cosine", "rel_error"} of two tensor lists (compared in fp64); NaN cosine when either is zero."""
    a, b = _flat(candidate), _flat(reference)
    denom = float(a.norm() * b.norm())
    return {"cosine": float(a @ b) / denom if denom > 0 else float("nan"),
            "rel_error": float((a - b).norm() / b.norm()) if float(b.norm()) > 0 else float("nan")}


def fp32_values(model: MaskedLM) -> MetaParams:
    """θ and φ of ``model`` as fp32 copies: what DeepSpeed's and the φ optimiser's fp32 masters hold."""
    split = split_parameters(model, model.dims.n_langs)
    p = MetaParams.from_module(model, split)
    return MetaParams(p.theta_names, [t.float() for t in p.theta], p.phi_names,
                      [[t.float() for t in ts] for ts in p.phi], source="fp32 masters")


def references(model: MaskedLM, lang: int, inputs: MetaInputs, beta: float) -> tuple[Hypergradient, Hypergradient]:
    """The fp64 double-backward hypergradients at ``model``'s values for β and for 0 (what :func:`measure` uses)."""
    m = plain_copy(model, torch.float64)
    params = MetaParams.from_module(m, split_parameters(m, m.dims.n_langs))
    return tuple(hypergradient(m, params, lang, inputs, b, method="exact") for b in (beta, 0.0))


def measure(model: MaskedLM, lang: int, inputs: MetaInputs, beta: float, dtype: torch.dtype = torch.bfloat16,
            precision: str = "fp32", method: str = "finite_difference", fd_scale: float = 0.01,
            fd_scheme: str = "central", tf32: bool = False,
            refs: tuple[Hypergradient, Hypergradient] | None = None) -> dict:
    """Fidelity of one hypergradient configuration against the fp64 exact reference.

    Args:
        model: the model at the point to test (any dtype; copied, never modified). Dropout is left as the
            model's mode has it: use ``model.eval()`` or no dropout, or every pass draws other masks.
        lang, inputs, beta: as :func:`~negint_ds.meta.hypergrad.hypergradient`.
        dtype: the training (working) precision of the module under test.
        precision: ``fp32`` (θ', θ± from fp32 masters, passes with fp32 parameters) or ``working``.
        method, fd_scale, fd_scheme: the configuration under test.
        tf32: emulate TF32 matmuls in the candidate's passes (attention then on the math kernel).
        refs: :func:`references` of the same (model, lang, inputs, beta), to reuse across configurations.

    Returns:
        {"whole": agreement, "second_order": agreement, "beta_part": agreement, "second_order_share" (of the
        reference: ‖β H·v‖/‖∂φF‖), "changed_fraction", "virtual_changed_fraction", "v_norm"}.
    """
    ref, ref0 = refs or references(model, lang, inputs, beta)
    work = plain_copy(model, dtype)
    params = (fp32_values(model) if precision == "fp32"
              else MetaParams.from_module(work, split_parameters(work, work.dims.n_langs)))
    ctx = contextlib.ExitStack()
    if tf32:
        ctx.enter_context(math_sdpa())
        ctx.enter_context(emulate_tf32())
    kw = dict(method=method, fd_scale=fd_scale, fd_scheme=fd_scheme)
    with ctx:
        cand = hypergradient(work, params, lang, inputs, beta, **kw)
        cand0 = hypergradient(work, params, lang, inputs, 0.0, **kw)
    _, ref_direct, ref_second = ref.norms()
    beta_part = lambda h, h0: [a - b for a, b in zip(h.grad, h0.grad)]  # noqa: E731
    return {"whole": agreement(cand.grad, ref.grad), "second_order": agreement(cand.second_order, ref.second_order),
            "beta_part": agreement(beta_part(cand, cand0), beta_part(ref, ref0)),
            "second_order_share": ref_second / ref_direct if ref_direct > 0 else float("nan"),
            "changed_fraction": cand.changed_fraction, "virtual_changed_fraction": cand.virtual_changed_fraction,
            "v_norm": cand.v_norm}


__all__ = ["DTYPES", "agreement", "fp32_values", "measure", "references"]

