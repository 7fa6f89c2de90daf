"""Hypergradient of the language-specific parameters φ_i (Wang et al. 2020, §4.1, Algorithm 1, Eq. 4 and 8).

For the language i trained at a step, with θ the shared and φ the language-specific parameters:

    θ'(φ_i) = θ − β ∇θ L_train^i(θ, φ_i)                                     (Algorithm 1, virtual step)
    F(φ_i)  = (1/|S|) Σ_{j∈S} L_val^j(θ'(φ_i), φ_j)                          (meta objective)
    ∇φ_i F  = ∂φ_i F |_{θ'}  −  β ∇²_{φ_i,θ} L_train^i(θ, φ_i) · v,   v = ∇θ' F   (Eq. 4)

``exact`` differentiates through θ' (second-order autograd; attention uses the math SDPA kernel, the
only one with a double backward, and adapters use the torch reference, not the fused kernel whose backward
is not differentiable). ``finite_difference`` replaces the mixed second derivative by a
central difference (Eq. 8, as DARTS):

    ∇²_{φ_i,θ} L_train^i · v ≈ (∇φ_i L_train^i(θ⁺, φ_i) − ∇φ_i L_train^i(θ⁻, φ_i)) / 2ε,
    θ± = θ ± ε v,   ε = c / ‖v‖   (DARTS: c = 0.01)

θ is never modified: θ', θ⁺ and θ⁻ are separate tensors passed through ``torch.func.functional_call``,
so θ after the probes is bit-identical to θ before. The two probes need only φ_i's gradient, so θ± are
plain tensors and autograd computes no weight gradient for θ there.

All functions work on one process's micro-batches; ``reduce_mean`` averages a list of tensors over
data-parallel ranks (identity on one process) so every rank gets the global-batch hypergradient. A
``scale`` (fp16 loss scale) multiplies every loss before differentiation and is divided out after.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call

from ..kernels import fd_hvp_reference as fd_ops
from ..kernels import reference_only
from ..mlm import MLMBatch

ReduceMean = Callable[[list[torch.Tensor]], None]
BeforeForward = Callable[[str, int, int], None]


@dataclass
class MetaInputs:
    """This rank's batches for one meta step.

    Attributes:
        train: micro-batches of the trained language i (the step's batch).
        val: the validation sum's terms: (language j, micro-batches of j), one entry per j ∈ S.
    """

    train: list[MLMBatch]
    val: list[tuple[int, list[MLMBatch]]]


@dataclass
class Hypergradient:
    """Result of one hypergradient computation (all values averaged over ranks, loss scale removed).

    Attributes:
        grad: fp32 tensors (fp64 for an fp64 model), one per φ_i tensor in ``phi_names`` order.
        train_loss / val_loss: L_train^i(θ, φ_i) and F at θ' (this rank's mean; nats).
        v_norm: ‖∇θ' F‖ (None for ``exact``, which never forms v; None rather than NaN keeps metrics.jsonl
            valid JSON).
        eps: the finite-difference step ε (None for ``exact``).
        changed_fraction: share of θ elements that θ⁺ = θ + εv changes after rounding to the parameters'
            dtype (near 1 means the perturbation is representable; near 0 in bf16/fp16 with a small ε
            means the difference quotient measures rounding, not curvature). None for fp32/fp64.
        virtual_changed_fraction: the same for the virtual step θ' = θ − βg: with β ≈ the learning rate,
            bf16 rounds most of it away, so the direct term ∂φF is then taken at ≈ θ rather than θ'.
    """

    grad: list[torch.Tensor]
    train_loss: float
    val_loss: float
    v_norm: float | None
    eps: float | None = None
    changed_fraction: float | None = None
    virtual_changed_fraction: float | None = None


def _noop(_: list[torch.Tensor]) -> None:
    return None


def mlm_loss(model: nn.Module, overrides: dict[str, torch.Tensor], batch: MLMBatch, lang: int) -> torch.Tensor:
    """Mean MLM loss of ``model`` with some parameters replaced by ``overrides`` (tied weights follow).

    Args:
        model: a :class:`~negint_ds.model.MaskedLM`; its own parameters are not modified.
        overrides: parameter name → tensor of that parameter's shape (and dtype), e.g. θ' or φ_i leaves.
        batch: one micro-batch on the model's device, every row of language ``lang``.
        lang: language index (routes the language-specific modules).

    Returns:
        0-d loss tensor (nats per predicted token).
    """
    return functional_call(model, overrides, (batch.input_ids, batch.lang_ids, batch.pred_positions, batch.targets),
                           {"lang": lang}, tie_weights=True, strict=False)


def _zeros(like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Gradient accumulators: fp32 for fp16/bf16/fp32 parameters, fp64 for fp64."""
    return [torch.zeros(t.shape, dtype=fd_ops.acc_dtype(t.dtype), device=t.device) for t in like]


def _acc(total: list[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> None:
    for a, g in zip(total, grads):
        if g is not None:
            a += g.to(a.dtype)


def _leaves(ts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [t.detach().requires_grad_(True) for t in ts]


def _call(hook: BeforeForward | None, phase: str, lang: int, micro: int) -> None:
    if hook is not None:
        hook(phase, lang, micro)


def train_grad_theta(model: nn.Module, theta_names: list[str], lang: int, batches: list[MLMBatch], scale: float = 1.0,
                     before_forward: BeforeForward | None = None) -> tuple[list[torch.Tensor], float]:
    """g = ∇θ L_train^i(θ, φ_i), the mean over this rank's micro-batches (not yet averaged over ranks).

    Returns:
        (one gradient per θ tensor in ``theta_names`` order — fp32, fp64 for an fp64 model — still
        multiplied by ``scale``; this rank's mean train loss in nats).
    """
    params = dict(model.named_parameters())
    theta = _leaves([params[n] for n in theta_names])
    g, loss_sum = _zeros(theta), torch.zeros((), device=theta[0].device)
    for m, mb in enumerate(batches):
        _call(before_forward, "train", lang, m)
        loss = mlm_loss(model, dict(zip(theta_names, theta)), mb, lang)
        _acc(g, torch.autograd.grad(loss * (scale / len(batches)), theta, allow_unused=True))
        loss_sum = loss_sum + loss.detach()
    return g, float(loss_sum) / len(batches)


def hypergradient_fd(model: nn.Module, theta_names: list[str], phi_names: list[str], lang: int, inputs: MetaInputs,
                     beta: float, fd_scale: float = 0.01, reduce_mean: ReduceMean = _noop, scale: float = 1.0,
                     before_forward: BeforeForward | None = None, ops=fd_ops) -> Hypergradient:
    """∇φ_i F with the finite-difference Hessian-vector product (Eq. 8).

    Args:
        model: the :class:`~negint_ds.model.MaskedLM` (its parameters are read, never written).
        theta_names / phi_names: names of θ and of φ_i in ``model.named_parameters()``.
        lang: i, the trained language.
        inputs: this rank's micro-batches.
        beta: virtual step size β (the paper: the current learning rate).
        fd_scale: c in ε = c/‖v‖.
        reduce_mean: in-place mean over data-parallel ranks.
        scale: loss scale (fp16); gradients are returned unscaled.
        before_forward: called as (phase, language, micro-batch) before every forward; the driver seeds
            dropout there so that the virtual step and both probes see the same dropout masks.
        ops: the multi-tensor ops (:mod:`negint_ds.kernels.fd_hvp_reference` or a fused implementation).

    Returns:
        :class:`Hypergradient`. If v = 0 the curvature term vanishes and ε is reported as 0.
    """
    params = dict(model.named_parameters())
    theta = [params[n].detach() for n in theta_names]
    phi = [params[n].detach() for n in phi_names]

    g, train_loss = train_grad_theta(model, theta_names, lang, inputs.train, scale, before_forward)
    reduce_mean(g)
    theta_prime = ops.perturb(theta, g, -beta / scale)  # θ' = θ − β g
    del g
    low_precision = theta[0].dtype in (torch.float16, torch.bfloat16)
    virtual_changed = _changed_fraction(theta, theta_prime) if low_precision else None

    v, direct = _zeros(theta), _zeros(phi)
    val_loss = torch.zeros((), device=theta[0].device)
    tp = _leaves(theta_prime)
    for j, mbs in inputs.val:
        w = scale / (len(inputs.val) * len(mbs))
        for m, mb in enumerate(mbs):
            ph = _leaves(phi)
            _call(before_forward, "val", j, m)
            loss = mlm_loss(model, {**dict(zip(theta_names, tp)), **dict(zip(phi_names, ph))}, mb, j)
            grads = torch.autograd.grad(loss * w, tp + ph, allow_unused=True)
            _acc(v, grads[:len(tp)])
            _acc(direct, grads[len(tp):])
            val_loss = val_loss + loss.detach() * (w / scale)
    val_loss = float(val_loss)
    del tp
    reduce_mean(v)
    v_norm = float(ops.global_norm(v)) / scale
    if v_norm == 0.0:
        reduce_mean(direct)
        return Hypergradient([d / scale for d in direct], train_loss, val_loss, 0.0, 0.0, None, virtual_changed)
    eps = fd_scale / v_norm  # ε = c/‖v‖ with v unscaled; the scaled v needs ε/scale
    probes, changed = [], None
    theta_pm = theta_prime  # θ' is no longer needed: its buffers hold θ⁺, then θ⁻
    for sign in (1.0, -1.0):
        ops.perturb(theta, v, sign * eps / scale, out=theta_pm)
        if sign > 0 and low_precision:
            changed = _changed_fraction(theta, theta_pm)
        acc = _zeros(phi)
        for m, mb in enumerate(inputs.train):
            ph = _leaves(phi)
            _call(before_forward, "train", lang, m)
            loss = mlm_loss(model, {**dict(zip(theta_names, theta_pm)), **dict(zip(phi_names, ph))}, mb, lang)
            _acc(acc, torch.autograd.grad(loss * (scale / len(inputs.train)), ph, allow_unused=True))
        probes.append(acc)
    del theta_pm, theta_prime
    grad = ops.combine(direct, probes[0], probes[1], beta, eps)
    reduce_mean(grad)
    return Hypergradient([t / scale for t in grad], train_loss, val_loss, v_norm, eps, changed, virtual_changed)


def _changed_fraction(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """Share of elements that differ between two lists of same-shaped tensors (one host sync)."""
    diff = torch.stack([(x != y).sum() for x, y in zip(a, b)]).sum()
    return float(diff) / max(1, sum(x.numel() for x in a))


def math_sdpa():
    """Context that restricts ``scaled_dot_product_attention`` to the math kernel (twice differentiable)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])
    except ImportError:  # pragma: no cover - torch < 2.3
        return contextlib.nullcontext()


def hypergradient_exact(model: nn.Module, theta_names: list[str], phi_names: list[str], lang: int, inputs: MetaInputs,
                        beta: float, reduce_mean: ReduceMean = _noop, scale: float = 1.0,
                        before_forward: BeforeForward | None = None,
                        reduce_mean_differentiable: Callable[[torch.Tensor], torch.Tensor] | None = None
                        ) -> Hypergradient:
    """∇φ_i F by differentiating through θ' (second order; the reference for :func:`hypergradient_fd`).

    Args:
        model, theta_names, phi_names, lang, inputs, beta, reduce_mean, scale, before_forward: as
            :func:`hypergradient_fd`.
        reduce_mean_differentiable: averages one tensor over ranks inside the autograd graph
            (``torch.distributed.nn.functional.all_reduce(t) / world``), so θ' uses the global-batch
            gradient with its dependence on φ_i intact; a collective whose backward is one too, so every
            rank must run this function. None on one process.

    Returns:
        :class:`Hypergradient` with no ``v_norm`` and no ε (nothing is differenced).
    """
    params = dict(model.named_parameters())
    with math_sdpa(), reference_only():  # double backward: math attention, torch (not fused) adapters
        theta = _leaves([params[n] for n in theta_names])
        phi = _leaves([params[n] for n in phi_names])
        over = {**dict(zip(theta_names, theta)), **dict(zip(phi_names, phi))}
        g, train_loss = None, torch.zeros((), device=theta[0].device)
        for m, mb in enumerate(inputs.train):
            _call(before_forward, "train", lang, m)
            loss = mlm_loss(model, over, mb, lang)
            gr = torch.autograd.grad(loss * (scale / len(inputs.train)), theta, create_graph=True, allow_unused=True)
            gr = [torch.zeros_like(t) if x is None else x for t, x in zip(theta, gr)]
            g = gr if g is None else [a + b for a, b in zip(g, gr)]
            train_loss = train_loss + loss.detach() / len(inputs.train)
        if reduce_mean_differentiable is not None:
            g = [reduce_mean_differentiable(x) for x in g]
        theta_prime = [t - (beta / scale) * x for t, x in zip(theta, g)]
        tp_over = {**dict(zip(theta_names, theta_prime)), **dict(zip(phi_names, phi))}
        grad, val_loss = _zeros(phi), torch.zeros((), device=theta[0].device)
        for j, mbs in inputs.val:
            w = scale / (len(inputs.val) * len(mbs))
            for m, mb in enumerate(mbs):
                _call(before_forward, "val", j, m)
                loss = mlm_loss(model, tp_over, mb, j)
                _acc(grad, torch.autograd.grad(loss * w, phi, retain_graph=True, allow_unused=True))
                val_loss = val_loss + loss.detach() * (w / scale)
    reduce_mean(grad)
    # losses stay on the device until here: one host sync per step, not one per micro-batch
    return Hypergradient([t / scale for t in grad], float(train_loss), float(val_loss), None, None, None)


@torch.no_grad()
def meta_objective(model: nn.Module, theta_names: list[str], phi_names: list[str], phi_values: Sequence[torch.Tensor],
                   lang: int, inputs: MetaInputs, beta: float) -> float:
    """F(φ_i) for given φ_i values (one process, no loss scale): the quantity both hypergradients differentiate.

    Used as a brute-force check: (F(φ + δu) − F(φ − δu)) / 2δ must equal ⟨∇φ_i F, u⟩.

    Args:
        phi_values: one tensor per name in ``phi_names``; the other arguments as :func:`hypergradient_fd`.

    Returns:
        F in nats (a Python float).
    """
    params = dict(model.named_parameters())
    phi_over = dict(zip(phi_names, phi_values))
    with torch.enable_grad():
        theta = _leaves([params[n] for n in theta_names])
        g = _zeros(theta)
        for mb in inputs.train:
            loss = mlm_loss(model, {**dict(zip(theta_names, theta)), **phi_over}, mb, lang)
            _acc(g, torch.autograd.grad(loss / len(inputs.train), theta, allow_unused=True))
    theta_prime = [t.detach() - beta * x.to(t.dtype) for t, x in zip(theta, g)]
    total = 0.0
    for j, mbs in inputs.val:
        for mb in mbs:
            loss = mlm_loss(model, {**dict(zip(theta_names, theta_prime)), **phi_over}, mb, j)
            total += float(loss) / (len(inputs.val) * len(mbs))
    return total
