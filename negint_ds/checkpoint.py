"""Load a pretrained model from a run directory without DeepSpeed (for fine-tuning and analyses)."""
from __future__ import annotations

import json
import os

import yaml

from .config import ModelConfig, from_mapping
from .model import MaskedLM, build_model


def load_pretrained(run_dir: str, device: str = "cpu") -> tuple[MaskedLM, dict]:
    """The exported model of a finished (or stopped-and-finished) run.

    Args:
        run_dir: a run directory written by ``launchers/pretrain.py``.
        device: where to put the model.

    Returns:
        (model in eval mode with fp32 weights, info) where info is ``export/model.json`` plus ``"config"``
        (the run's resolved config.yaml as a dict) and ``"spm_model"`` (path of the vocabulary).

    Raises:
        FileNotFoundError: the run has no export yet (it is written when training finishes).
    """
    export = os.path.join(run_dir, "export")
    weights = os.path.join(export, "model.safetensors")
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{weights} not found: the run exports its model when training finishes")
    with open(os.path.join(export, "model.json"), encoding="utf-8") as f:
        info = json.load(f)
    with open(os.path.join(run_dir, "config.yaml"), encoding="utf-8") as f:
        info["config"] = yaml.safe_load(f)
    info["spm_model"] = os.path.join(export, "spm.model")
    cfg = from_mapping(ModelConfig, info["model"], source=os.path.join(export, "model.json"), root="model")
    model = build_model(cfg, info["vocab_size"], len(info["lang_ids"]), info["pad_id"], info["lang_ids"])
    from safetensors.torch import load_model

    load_model(model, weights, device=device)
    return model.to(device).eval(), info
