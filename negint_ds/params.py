"""θ (shared) / φ = {φ_i} (language-specific) split of a model's parameters, and φ-only checkpoints.

φ_i is every parameter under a :class:`~negint_ds.model.PerLanguage` module's copy i (names contain
``.per_lang.<i>.``); θ is everything else. The split is used by the optimisers (DeepSpeed owns θ, the
per-language optimiser owns φ), by checkpoints (save or load φ alone) and by fine-tuning (freeze φ, or
swap one language's φ for another's for zero-shot transfer).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import torch
from torch import nn

_PHI = re.compile(r"\.per_lang\.(\d+)\.")


@dataclass
class ParamSplit:
    """Names and parameters of θ and of each φ_i (in ``model.named_parameters()`` order)."""

    theta: dict[str, nn.Parameter]
    phi: list[dict[str, nn.Parameter]]

    @property
    def has_phi(self) -> bool:
        """True when the model has any language-specific parameter."""
        return any(self.phi)

    def phi_names(self, lang: int) -> list[str]:
        """Names of φ_lang's parameters, in ``named_parameters()`` order."""
        return list(self.phi[lang])


def phi_language(name: str) -> int | None:
    """Language index of a φ parameter name, or None for a θ parameter."""
    m = _PHI.search(name)
    return int(m.group(1)) if m else None


def split_parameters(model: nn.Module, n_langs: int) -> ParamSplit:
    """Split ``model``'s parameters into θ and φ_0 … φ_{n_langs-1}.

    Raises:
        ValueError: a φ parameter names a language index >= n_langs.
    """
    theta: dict[str, nn.Parameter] = {}
    phi: list[dict[str, nn.Parameter]] = [{} for _ in range(n_langs)]
    for name, p in model.named_parameters():
        lang = phi_language(name)
        if lang is None:
            theta[name] = p
        elif lang >= n_langs:
            raise ValueError(f"parameter {name} belongs to language {lang}, but the model has {n_langs} languages")
        else:
            phi[lang][name] = p
    return ParamSplit(theta, phi)


def rename_phi(name: str, lang: int) -> str:
    """The name of the same φ tensor in another language's copy."""
    return _PHI.sub(f".per_lang.{lang}.", name, count=1)


def save_phi(model: nn.Module, path: str, lang_ids: list[str], langs: list[str] | None = None) -> None:
    """Write the φ parameters of ``langs`` (default: all) to a safetensors file, fp32, atomically.

    Tensors are stored under language-independent names ``<lang_id>/<name with per_lang.0>`` and the
    metadata records the language ids, so :func:`load_phi` can map them onto any language slot.
    """
    import os

    from safetensors.torch import save_file

    want = set(lang_ids if langs is None else langs)
    unknown = want - set(lang_ids)
    if unknown:
        raise ValueError(f"unknown language ids {sorted(unknown)}; the model has {lang_ids}")
    tensors = {}
    for name, p in model.named_parameters():
        i = phi_language(name)
        if i is not None and lang_ids[i] in want:
            tensors[f"{lang_ids[i]}/{rename_phi(name, 0)}"] = p.detach().float().cpu().contiguous()
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata={"format": "negint_ds.phi", "lang_ids": json.dumps(sorted(want))})
    os.replace(tmp, path)


@torch.no_grad()
def load_phi(model: nn.Module, path: str, lang_ids: list[str], mapping: dict[str, str] | None = None) -> list[str]:
    """Copy φ from a :func:`save_phi` file into ``model``.

    Args:
        lang_ids: the model's language ids (index i = φ_i).
        mapping: ``{target_lang_id: source_lang_id}``; default: every language present in both. Use it to
            swap adapters, e.g. ``{"sw": "en"}`` puts English φ into the Swahili slot (zero-shot transfer).

    Returns:
        The target language ids that were loaded.

    Raises:
        ValueError: a language is missing from the file or the model, or tensor shapes differ.
    """
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        saved = json.loads(f.metadata().get("lang_ids", "[]"))
        mapping = {l: l for l in lang_ids if l in saved} if mapping is None else mapping
        problems = [f"{src!r} not in {path} (has {saved})" for src in mapping.values() if src not in saved]
        problems += [f"{dst!r} not a language of the model ({lang_ids})" for dst in mapping if dst not in lang_ids]
        if problems:
            raise ValueError("; ".join(problems))
        params = dict(model.named_parameters())
        for dst, src in mapping.items():
            i = lang_ids.index(dst)
            wanted = {n for n in params if phi_language(n) == i}
            for key in (k for k in f.keys() if k.startswith(src + "/")):
                name = rename_phi(key.split("/", 1)[1], i)
                if name not in params:
                    raise ValueError(f"{path}: {key} has no counterpart {name} in the model")
                t = f.get_tensor(key)
                if t.shape != params[name].shape:
                    raise ValueError(f"{path}: {key} has shape {tuple(t.shape)}, model has {tuple(params[name].shape)}")
                params[name].copy_(t.to(params[name].dtype))
                wanted.discard(name)
            if wanted:
                raise ValueError(f"{path}: language {src!r} lacks {len(wanted)} φ tensors of the model, e.g. "
                                 f"{sorted(wanted)[0]} (saved from a model with other language-specific parts?)")
    return list(mapping)
