"""A pretrained run directory opened for analysis: its recipe, vocabulary, data and fp32 weights.

Weights come from the run's export (``export/model.safetensors``, written at the end of training) or from
one of its DeepSpeed checkpoints (the offline gradient-conflict mode walks them in order).
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass

import torch

from ..config import ExperimentConfig, from_mapping, read_mapping
from ..data.binarized import TokenStream, open_binarized
from ..data.vocab import PAD_ID, Vocabulary
from ..model import MaskedLM, build_model


class AnalysisError(ValueError):
    """An analysis cannot run on the given input (the message names the file, field or value)."""


@dataclass
class Pretrained:
    """One pretrained model ready for analysis.

    Attributes:
        run_dir: absolute path of the run directory.
        cfg: the run's recipe (``config.yaml``).
        model: fp32 :class:`~negint_ds.model.MaskedLM` on CPU in eval mode, holding the chosen weights.
        vocab: the run's SentencePiece vocabulary (``export/spm.model`` or the data directory's).
        step: the optimiser step the weights are from.
        source: ``"export"`` or the checkpoint tag.
    """

    run_dir: str
    cfg: ExperimentConfig
    model: MaskedLM
    vocab: Vocabulary
    step: int
    source: str

    @property
    def lang_ids(self) -> list[str]:
        """The model's languages; index i is language embedding (and φ) i."""
        return self.cfg.lang_ids

    def lang_index(self, lang: str) -> int:
        """Index of language ``lang``.

        Raises:
            AnalysisError: the model was not trained on ``lang`` (the message lists its languages).
        """
        if lang not in self.lang_ids:
            raise AnalysisError(f"language {lang!r} is not a language of the model in {self.run_dir} "
                                f"(it has {self.lang_ids})")
        return self.lang_ids.index(lang)

    def stream(self, lang: str, split: str) -> TokenStream:
        """The prepared token stream of ``lang``'s ``split`` (train/valid/test), checked against the vocabulary.

        Raises:
            AnalysisError: unknown language or split; BinarizedError: the file is missing, corrupt, or was
                built with another vocabulary.
        """
        self.lang_index(lang)
        manifest = _read_json(os.path.join(self.cfg.data.dir, "manifest.json"))
        splits = manifest["languages"][lang]["splits"]
        if split not in splits:
            raise AnalysisError(f"split {split!r} not in {self.cfg.data.dir}/manifest.json for {lang} "
                                f"(has {sorted(splits)})")
        return open_binarized(os.path.join(self.cfg.data.dir, splits[split]["file"]), self.vocab.sha256,
                              self.vocab.size)

    def text_path(self, lang: str, split: str) -> str:
        """The cleaned text of ``lang``'s ``split``, one sentence per line (written by ``prepare``).

        Raises:
            AnalysisError: unknown language, or the file is missing.
        """
        self.lang_index(lang)
        path = os.path.join(self.cfg.data.dir, "text", f"{lang}.{split}.txt")
        if not os.path.isfile(path):
            raise AnalysisError(f"{path} not found: the prepared data of {self.run_dir} has no {split} text for "
                                f"{lang}; re-run `python -m negint_ds.prepare` with its recipe")
        return path


def run_config(run_dir: str, error: type[Exception] = AnalysisError) -> ExperimentConfig:
    """The recipe a run trained with (``<run_dir>/config.yaml``).

    Raises:
        ``error`` (default AnalysisError): ``run_dir`` holds no config.yaml; ConfigError: it does not load.
    """
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        raise error(f"{run_dir} is not a negint_ds run directory (no config.yaml)")
    return from_mapping(ExperimentConfig, read_mapping(path), source=path, root="config")


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise AnalysisError(f"{path} not found")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def checkpoint_tags(run_dir: str) -> list[tuple[int, str]]:
    """(step, tag) of every complete checkpoint in ``run_dir/checkpoints``, oldest first (quarantine excluded)."""
    out = []
    for d in glob.glob(os.path.join(run_dir, "checkpoints", "step_*")):
        tag = os.path.basename(d)
        if os.path.isfile(os.path.join(d, "mp_rank_00_model_states.pt")) and tag[5:].isdigit():
            out.append((int(tag[5:]), tag))
    return sorted(out)


def checkpoint_state(run_dir: str, tag: str) -> dict[str, torch.Tensor]:
    """fp32 state dict of checkpoint ``tag``: DeepSpeed's fp32 master weights when the run kept them (ZeRO ≥ 1,
    16-bit training), else the module state saved by rank 0 (complete under ZeRO 0–2).

    Raises:
        AnalysisError: the checkpoint is missing or was written under ZeRO-3 without fp32 masters.
    """
    ckpt = os.path.join(run_dir, "checkpoints", tag)
    path = os.path.join(ckpt, "mp_rank_00_model_states.pt")
    if not os.path.isfile(path):
        raise AnalysisError(f"checkpoint {tag} of {run_dir} not found (no {path})")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    state = {k: v.float() for k, v in (saved.get("module") or {}).items()}
    if any(v.dtype != torch.float32 for v in (saved.get("module") or {}).values()) or not state \
            or any(v.numel() == 0 for v in state.values()):
        try:  # 16-bit training or ZeRO-3: DeepSpeed's own fp32 reconstruction
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            fp32 = get_fp32_state_dict_from_zero_checkpoint(os.path.join(run_dir, "checkpoints"), tag=tag)
            state.update({k: v.float() for k, v in fp32.items()})
        except Exception as e:
            if not state or any(v.numel() == 0 for v in state.values()):
                raise AnalysisError(f"checkpoint {tag} of {run_dir} holds no complete module state and its fp32 "
                                    f"weights cannot be reconstructed ({e})") from e
    return state


def load_pretrained(run_dir: str, checkpoint: str | None = None) -> Pretrained:
    """Open ``run_dir`` with the weights of its export (default) or of checkpoint ``checkpoint``.

    Raises:
        AnalysisError: not a run directory; no export (the run has not finished) and no checkpoint named; the
            checkpoint is missing; the data directory's vocabulary differs from the one the run trained with.
        ConfigError: ``config.yaml`` does not load.
    """
    run_dir = os.path.abspath(run_dir)
    cfg = run_config(run_dir)
    export = os.path.join(run_dir, "export")
    run_meta = _read_json(os.path.join(run_dir, "run.json")) if os.path.isfile(os.path.join(run_dir, "run.json")) \
        else {}
    if checkpoint is None:
        weights = os.path.join(export, "model.safetensors")
        if not os.path.isfile(weights):
            raise AnalysisError(f"{run_dir} has no export/model.safetensors (training has not finished); finish it "
                                f"with --resume or name a checkpoint (one of "
                                f"{[t for _, t in checkpoint_tags(run_dir)]})")
        info = _read_json(os.path.join(export, "model.json"))
        vocab = Vocabulary(os.path.join(export, "spm.model"))
        from safetensors.torch import load_file

        state, step, source = load_file(weights), int(info["step"]), "export"
        expected_sha = info.get("vocab_sha256")
    else:
        state = checkpoint_state(run_dir, checkpoint)
        vocab = Vocabulary(os.path.join(cfg.data.dir, "spm.model"))
        step, source = int(checkpoint[5:]) if checkpoint[5:].isdigit() else -1, checkpoint
        expected_sha = run_meta.get("vocab_sha256")
    if expected_sha is not None and vocab.sha256 != expected_sha:
        raise AnalysisError(f"{vocab.path} (SHA-256 {vocab.sha256[:12]}…) is not the vocabulary {run_dir} was trained "
                            f"with ({expected_sha[:12]}…)")
    data_vocab = os.path.join(cfg.data.dir, "spm.model")
    if os.path.isfile(data_vocab) and Vocabulary(data_vocab).sha256 != vocab.sha256:
        raise AnalysisError(f"{data_vocab} is not the vocabulary {run_dir} was trained with: the data directory "
                            f"{cfg.data.dir} was re-prepared since; its token files cannot be scored by this model")
    model = build_model(cfg.model, vocab.size, len(cfg.lang_ids), PAD_ID, cfg.lang_ids)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise AnalysisError(f"{run_dir} ({source}): weights do not fit the recipe's model: missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}")
    model.eval()
    return Pretrained(run_dir, cfg, model, vocab, step, source)


__all__ = ["AnalysisError", "Pretrained", "checkpoint_state", "checkpoint_tags", "load_pretrained", "run_config"]
