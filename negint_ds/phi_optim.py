"""The optimiser of the language-specific parameters φ: one AdamW (or SGD) per language, fp32 master weights.

DeepSpeed owns θ (precision, loss scaling, ZeRO partitioning). φ lives in the same module but outside
DeepSpeed's optimiser, because a step on language i must leave every φ_j (j ≠ i) untouched: a shared
Adam would keep moving inactive languages through momentum and weight decay, whereas the paper's code
skips parameters without a gradient. Each language has its own AdamW state, stepped only when that
language is trained; masters are fp32 and are written back (cast) into the module after every step.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch

from .params import ParamSplit


class LanguageOptimizer:
    """Per-language AdamW (or SGD) over φ.

    Args:
        split: the model's θ/φ split (φ tensors are updated in place after each step).
        betas, eps, weight_decay: AdamW hyper-parameters (default: those of DeepSpeed's optimizer section).
        max_grad_norm: clip φ_i's gradient to this global norm (0 or None: no clipping).
        initial: per-language initial values (default: the module's current φ).
        share_masters_with: another LanguageOptimizer whose master weights this one also updates.
        algorithm: ``adamw`` (default) or ``sgd``: φ_i ← φ_i − lr·g (Eq. 3's plain gradient step; betas, eps
            and weight decay are then unused).

    Raises:
        ValueError: unknown ``algorithm``, or ``initial`` does not match the split.
    """

    def __init__(self, split: ParamSplit, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.01,
                 max_grad_norm: float | None = None, initial: list[list[torch.Tensor]] | None = None,
                 share_masters_with: "LanguageOptimizer | None" = None, algorithm: str = "adamw"):
        if algorithm not in ("adamw", "sgd"):
            raise ValueError(f"LanguageOptimizer: algorithm must be 'adamw' or 'sgd', got {algorithm!r}")
        self.params = [list(phi.values()) for phi in split.phi]
        self.names = [list(phi) for phi in split.phi]
        if share_masters_with is not None:
            # a second AdamW state over the same φ (the official code's train-loss and meta optimisers)
            self.masters = share_masters_with.masters
        else:
            # fp32 masters (fp64 for an fp64 model), from ``initial`` when given: the values before
            # DeepSpeed cast the module to bf16/fp16, so no precision is lost at start
            src = initial or [[p.detach() for p in ps] for ps in self.params]
            shapes = [[tuple(t.shape) for t in ss] for ss in src]
            if shapes != [[tuple(p.shape) for p in ps] for ps in self.params]:
                raise ValueError("LanguageOptimizer: `initial` must hold one tensor per φ parameter, in split order")
            self.masters = [[s.to(device=p.device, dtype=torch.promote_types(s.dtype, torch.float32)).clone()
                             .requires_grad_(True) for s, p in zip(ss, ps)] for ss, ps in zip(src, self.params)]
        def make(ms):
            if algorithm == "sgd":
                return torch.optim.SGD(ms, lr=0.0)
            return torch.optim.AdamW(ms, lr=0.0, betas=tuple(betas), eps=eps, weight_decay=weight_decay)

        self.algorithm = algorithm
        self.opts = [make(ms) if ms else None for ms in self.masters]
        self.max_grad_norm = max_grad_norm or 0.0
        self.steps = [0] * len(self.params)

    def step(self, lang: int, grads: Sequence[torch.Tensor | None], lr: float) -> dict:
        """One optimiser step of φ_lang with already-unscaled, already-averaged gradients.

        Args:
            lang: language index i.
            grads: one gradient per φ_i tensor (``None`` = zero), any float dtype.
            lr: learning rate of this step.

        Returns:
            ``{"grad_norm": float, "skipped": bool}``; the step is skipped (state untouched) when the
            gradient is not finite, e.g. after an fp16 overflow.

        Raises:
            ValueError: wrong number of gradients.
        """
        masters = self.masters[lang]
        if len(grads) != len(masters):
            raise ValueError(f"language {lang}: {len(grads)} gradients for {len(masters)} φ tensors")
        if not masters:
            return {"grad_norm": 0.0, "skipped": False}
        g = [torch.zeros_like(m) if t is None else t.detach().to(m.dtype) for m, t in zip(masters, grads)]
        norm = float(torch.stack([t.pow(2).sum() for t in g]).sum().sqrt())
        if not math.isfinite(norm):
            return {"grad_norm": norm, "skipped": True}
        if self.max_grad_norm and norm > self.max_grad_norm:
            coef = self.max_grad_norm / (norm + 1e-6)
            g = [t * coef for t in g]
        for m, t in zip(masters, g):
            m.grad = t
        opt = self.opts[lang]
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.steps[lang] += 1
        self._write_back(lang)
        return {"grad_norm": norm, "skipped": False}

    @torch.no_grad()
    def _write_back(self, lang: int) -> None:
        for p, m in zip(self.params[lang], self.masters[lang]):
            p.copy_(m.to(p.dtype))

    @torch.no_grad()
    def sync_to_module(self) -> None:
        """Write every language's fp32 masters into the module (after loading a checkpoint)."""
        for i in range(len(self.params)):
            self._write_back(i)

    def state_dict(self, include_masters: bool = True) -> dict:
        """A snapshot (copies on CPU, never aliases of the live state) for checkpoints.

        ``include_masters=False`` for an optimiser that shares its masters with another (saved there).
        """
        return {"masters": [[m.detach().cpu().clone() for m in ms] for ms in self.masters] if include_masters else None,
                "names": self.names, "steps": list(self.steps),
                "opts": [copy.deepcopy(_to_cpu(o.state_dict())) if o is not None else None for o in self.opts]}

    def load_state_dict(self, sd: dict) -> None:
        """Restore masters and AdamW states, then write the masters into the module.

        Raises:
            ValueError: the saved φ layout (names per language) differs from this model's.
        """
        if sd["names"] != self.names:
            raise ValueError("saved φ optimizer state does not match this model's language-specific parameters")
        if sd["masters"] is not None:
            with torch.no_grad():
                for ms, saved in zip(self.masters, sd["masters"]):
                    for m, s in zip(ms, saved):
                        m.copy_(s)
        for o, s in zip(self.opts, sd["opts"]):
            if o is not None:
                o.load_state_dict(s)
        self.steps = list(sd["steps"])
        self.sync_to_module()


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
