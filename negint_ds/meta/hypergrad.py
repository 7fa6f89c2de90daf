"""Hypergradient of the language-specific parameters φ_i (Wang et al. 2020, §4.1, Algorithm 1, Eq. 3, 4 and 8).

For the language i trained at a step, with θ the shared and φ the language-specific parameters:

    θ'(φ_i) = θ − β ∇θ L_train^i(θ, φ_i)                                     (Eq. 3, virtual step)
    F(φ_i)  = (1/|S|) Σ_{j∈S} L_val^j(θ'(φ_i), φ_j)                          (meta objective)
    ∇φ_i F  = ∂φ_i F |_{θ'}  −  β ∇²_{φ_i,θ} L_train^i(θ, φ_i) · v,   v = ∇θ' F   (Eq. 4)

Both methods compute the first term (``direct``) and v in one first-order backward of the validation
sum at θ', and differ only in the mixed Hessian-vector product H·v = ∇²_{φ_i,θ} L_train^i · v:

* ``exact``: H·v = ∇φ_i ⟨∇θ L_train^i(θ, φ_i), v⟩ by double backward of the train loss (attention on the
  math SDPA kernel and adapters on the torch reference: the only twice-differentiable versions). This is
  Eq. 4 exactly — the same value as differentiating through θ' (what the official code does) — and, unlike
  keeping θ''s graph through the validation sum, costs one extra train forward instead of that memory.
* ``finite_difference`` (Eq. 8, as DARTS), ε = c/‖v‖:
  ``central``  H·v ≈ (∇φ_i L_train^i(θ⁺) − ∇φ_i L_train^i(θ⁻)) / 2ε, θ± = θ ± εv, error O(ε²), two probes;
  ``forward``  H·v ≈ (∇φ_i L_train^i(θ⁺) − ∇φ_i L_train^i(θ)) / ε, error O(ε), one probe: ∇φ_i L_train^i(θ)
  comes from the virtual step's backward, which only has to ask for φ_i's gradient as well.

θ is never modified: θ', θ⁺ and θ⁻ are separate tensors passed through ``torch.func.functional_call``, so θ
after the probes is bit-identical to θ before; the probes compute φ_i's gradient only. The values used for
θ and φ are a :class:`~negint_ds.meta.state.MetaParams` (fp32 masters with ``meta.precision: fp32``).

Everything works on one process's micro-batches; ``reduce_mean`` averages a list of tensors over
data-parallel ranks (identity on one process) so every rank gets the global-batch hypergradient (H·v is
linear in the per-rank train gradients, so each rank's ∇φ_i⟨g_r, v⟩ with the global v averages to the
global one). A ``scale`` (fp16 loss scale) multiplies every loss before differentiation and is divided
out after.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..kernels import fd_hvp_reference as fd_ref_ops
from ..kernels import reference_only
from .passes import BeforeForward, accumulate, call, changed_fraction, eager, leaves, math_sdpa, mlm_loss, zeros
from .state import Hypergradient, MetaInputs, MetaParams

ReduceMean = Callable[[list[torch.Tensor]], None]
METHODS = ("finite_difference", "exact")
SCHEMES = ("central", "forward")


def _noop(_: list[torch.Tensor]) -> None:
    return None


def train_grads(model: nn.Module, params: MetaParams, lang: int, inputs: MetaInputs, scale: float = 1.0,
                before_forward: BeforeForward | None = None, with_phi: bool = False
                ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, torch.Tensor]:
    """g = ∇θ L_train^i(θ, φ_i) (and, with ``with_phi``, ∇φ_i L_train^i(θ, φ_i)): this rank's micro-batch mean.

    Returns:
        (g per θ tensor, φ_i gradients or None — both fp32/fp64 accumulators still multiplied by ``scale``,
        not yet averaged over ranks — and this rank's mean train loss as a 0-d device tensor in nats).
    """
    theta = leaves(params.theta)
    phi = leaves(params.phi[lang]) if with_phi else params.phi[lang]
    g, g_phi = zeros(theta), zeros(phi) if with_phi else None
    loss_sum = torch.zeros((), device=theta[0].device)
    for m, mb in enumerate(inputs.train):
        call(before_forward, inputs.train_phase, lang, m)
        loss = mlm_loss(model, params.overrides(theta, lang, phi), mb, lang)
        grads = torch.autograd.grad(loss * (scale / len(inputs.train)), theta + (phi if with_phi else []),
                                    allow_unused=True)
        accumulate(g, grads[:len(theta)])
        if with_phi:
            accumulate(g_phi, grads[len(theta):])
        loss_sum = loss_sum + loss.detach()
    return g, g_phi, loss_sum / len(inputs.train)


def val_grads(model: nn.Module, params: MetaParams, theta_prime: list[torch.Tensor], lang: int, inputs: MetaInputs,
              scale: float = 1.0, before_forward: BeforeForward | None = None
              ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """v = ∇θ' F and the direct term ∂φ_i F at θ' (θ' held fixed): one first-order backward per micro-batch.

    Language j's forward uses φ_j's own values; only the j = i term depends on φ_i directly.

    Returns:
        (v per θ tensor, ∂φ_i F per φ_i tensor — scaled, this rank's — and this rank's F as a 0-d tensor).
    """
    tp = leaves(theta_prime)
    v, direct = zeros(tp), zeros(params.phi[lang])
    val_loss = torch.zeros((), device=tp[0].device)
    for j, mbs in inputs.val:
        w = scale / (len(inputs.val) * len(mbs))
        for m, mb in enumerate(mbs):
            phi_j = leaves(params.phi[j]) if j == lang else params.phi[j]
            call(before_forward, "val", j, m)
            loss = mlm_loss(model, params.overrides(tp, j, phi_j), mb, j)
            grads = torch.autograd.grad(loss * w, tp + (phi_j if j == lang else []), allow_unused=True)
            accumulate(v, grads[:len(tp)])
            if j == lang:
                accumulate(direct, grads[len(tp):])
            val_loss = val_loss + loss.detach() * (w / scale)
    return v, direct, val_loss


def probe_grads(model: nn.Module, params: MetaParams, theta_at: list[torch.Tensor], lang: int, inputs: MetaInputs,
                scale: float = 1.0, before_forward: BeforeForward | None = None) -> list[torch.Tensor]:
    """∇φ_i L_train^i(θ_at, φ_i) over this rank's train micro-batches (scaled; θ_at is a plain tensor list,
    so autograd computes no weight gradient for θ)."""
    acc = zeros(params.phi[lang])
    for m, mb in enumerate(inputs.train):
        phi = leaves(params.phi[lang])
        call(before_forward, inputs.train_phase, lang, m)
        loss = mlm_loss(model, params.overrides(theta_at, lang, phi), mb, lang)
        accumulate(acc, torch.autograd.grad(loss * (scale / len(inputs.train)), phi, allow_unused=True))
    return acc


def exact_hvp(model: nn.Module, params: MetaParams, lang: int, inputs: MetaInputs, v: list[torch.Tensor],
              scale: float = 1.0, before_forward: BeforeForward | None = None) -> list[torch.Tensor]:
    """H·v = ∇φ_i ⟨∇θ L_train^i(θ, φ_i), v⟩ by double backward (Eq. 4's term without −β), this rank's batches.

    ``v`` must already be unscaled; the result carries ``scale`` once (like the other scaled gradients).
    """
    acc = zeros(params.phi[lang])
    with math_sdpa(), reference_only():  # double backward: math attention, torch (not fused) adapters
        for m, mb in enumerate(inputs.train):
            theta, phi = leaves(params.theta), leaves(params.phi[lang])
            call(before_forward, inputs.train_phase, lang, m)
            loss = mlm_loss(model, params.overrides(theta, lang, phi), mb, lang)
            g = torch.autograd.grad(loss * (scale / len(inputs.train)), theta, create_graph=True, allow_unused=True)
            dot = sum((gk * vk.to(gk.dtype)).sum() for gk, vk in zip(g, v) if gk is not None)
            accumulate(acc, torch.autograd.grad(dot, phi, allow_unused=True))
    return acc


def hypergradient(model: nn.Module, params: MetaParams, lang: int, inputs: MetaInputs, beta: float,
                  method: str = "finite_difference", fd_scale: float = 0.01, fd_scheme: str = "central",
                  reduce_mean: ReduceMean = _noop, scale: float = 1.0, before_forward: BeforeForward | None = None,
                  ops=fd_ref_ops) -> Hypergradient:
    """∇φ_i F for the trained language ``lang`` (Algorithm 1 line 6; Eq. 3, 4 and 8).

    Args:
        model: the :class:`~negint_ds.model.MaskedLM` (read, never written); compiled or not, it runs eagerly.
        params: values of θ and φ (e.g. fp32 masters on a bf16 module; see :class:`MetaParams`).
        lang: i, the trained language.
        inputs: this rank's micro-batches (train batch of i; validation batches of every j ∈ S).
        beta: virtual step size β (the paper: the current learning rate).
        method: ``finite_difference`` (Eq. 8) or ``exact`` (double backward).
        fd_scale: c in ε = c/‖v‖ (finite differences).
        fd_scheme: ``central`` or ``forward`` (finite differences).
        reduce_mean: in-place mean over data-parallel ranks (a collective: every rank must call this function).
        scale: loss scale (fp16 working precision); the result is unscaled.
        before_forward: called as (phase, language, micro-batch) before every forward; the driver seeds
            dropout there so that the virtual step and the probes see the same dropout masks.
        ops: the multi-tensor ops (:mod:`negint_ds.kernels.fd_hvp_reference` or a fused implementation).

    Returns:
        :class:`Hypergradient`. If v = 0 the second-order term vanishes and ε is reported as 0.

    Raises:
        ValueError: unknown ``method`` or ``fd_scheme``.
    """
    if method not in METHODS or fd_scheme not in SCHEMES:
        raise ValueError(f"hypergradient: method must be one of {METHODS} and fd_scheme one of {SCHEMES}, got "
                         f"{method!r}, {fd_scheme!r}")
    forward = method == "finite_difference" and fd_scheme == "forward"
    theta, low = params.theta, params.dtype in (torch.float16, torch.bfloat16)
    with eager(model):
        g, g_phi, train_loss = train_grads(model, params, lang, inputs, scale, before_forward, with_phi=forward)
        reduce_mean(g + (g_phi or []))
        theta_prime = ops.perturb(theta, g, -beta / scale)  # θ' = θ − β g, rounded once to θ's dtype
        del g
        virtual_changed = changed_fraction(theta, theta_prime, params.dtype) if low else None
        v, direct, val_loss = val_grads(model, params, theta_prime, lang, inputs, scale, before_forward)
        reduce_mean(v + direct)
        v_norm = float(ops.global_norm(v)) / scale
        eps, changed = None, None
        if v_norm == 0.0:
            grad = direct
            eps = 0.0 if method == "finite_difference" else None
        elif method == "exact":
            del theta_prime
            hvp = exact_hvp(model, params, lang, inputs, [t / scale for t in v], scale, before_forward)
            reduce_mean(hvp)
            grad = [d - beta * h for d, h in zip(direct, hvp)]
        else:
            eps = fd_scale / v_norm  # ε = c/‖v‖ with v unscaled
            probes, theta_pm = [], theta_prime  # θ' is no longer needed: its buffers hold θ⁺ (then θ⁻)
            for sign in ((1.0,) if forward else (1.0, -1.0)):
                ops.perturb(theta, v, sign * eps / scale, out=theta_pm)  # the scaled v needs ε/scale
                if sign > 0 and low:
                    changed = changed_fraction(theta, theta_pm, params.dtype)
                probes.append(probe_grads(model, params, theta_pm, lang, inputs, scale, before_forward))
            del theta_pm, theta_prime
            if forward:  # (g⁺ − g)/ε = (g⁺ − g)/(2·(ε/2)): the central combine with half the step
                reduce_mean(probes[0])
                grad = ops.combine(direct, probes[0], g_phi, beta, eps / 2)
            else:
                reduce_mean(probes[0] + probes[1])
                grad = ops.combine(direct, probes[0], probes[1], beta, eps)
    grad = [t / scale for t in grad]
    direct = [t / scale for t in direct]
    second = [a - b for a, b in zip(grad, direct)]
    # losses stay on the device until here: one host sync per step, not one per micro-batch
    losses = torch.stack([train_loss, val_loss]).tolist()
    return Hypergradient(grad, direct, second, losses[0], losses[1], v_norm, eps, changed, virtual_changed)


__all__ = ["METHODS", "SCHEMES", "exact_hvp", "hypergradient", "probe_grads", "train_grads", "val_grads"]
