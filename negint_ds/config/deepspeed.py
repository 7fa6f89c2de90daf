"""Load and check a DeepSpeed JSON config before the engine sees it.

DeepSpeed owns batch sizes, optimizer, precision, clipping and ZeRO; we check what would otherwise
fail late or cryptically (batch arithmetic, fp16/bf16 without a GPU, missing optimizer) and report
every problem at once naming the file and key.
"""
from __future__ import annotations

import copy
import json
import os

from ..problems import Problem
from .loader import ConfigError, DuplicateKeys, load_json

_KNOWN_OPTIMIZERS = {"adam", "adamw", "lamb", "onebitadam", "zerooneadam", "onebitlamb", "sgd", "adagrad",
                     "lion", "muon", "cpuadam", "fusedadam"}


def read_ds_config(path: str) -> dict:
    """Read a DeepSpeed JSON config.

    Raises:
        ConfigError: the file is missing, not JSON, or not a JSON object.
    """
    if not os.path.isfile(path):
        raise ConfigError([f"file not found: {path}"], source="--deepspeed_config")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = load_json(f.read())
    except json.JSONDecodeError as e:
        raise ConfigError([f"not valid JSON: {e}"], source=path) from e
    except DuplicateKeys as e:
        raise ConfigError(e.problems, source=path) from None
    if not isinstance(cfg, dict):
        raise ConfigError(["top level must be a JSON object"], source=path)
    return cfg


def resolve_batch(cfg: dict, world_size: int) -> tuple[int, int, int, list[str]]:
    """Fill in DeepSpeed's batch triple: train_batch_size = micro × accumulation × world size.

    Args:
        cfg: DeepSpeed config dict (not modified).
        world_size: number of data-parallel processes.

    Returns:
        (train_batch_size, micro_batch_per_process, gradient_accumulation_steps, problems).
    """
    tbs = cfg.get("train_batch_size")
    mbs = cfg.get("train_micro_batch_size_per_gpu")
    gas = cfg.get("gradient_accumulation_steps")
    problems = []
    for key, v in (("train_batch_size", tbs), ("train_micro_batch_size_per_gpu", mbs),
                   ("gradient_accumulation_steps", gas)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            problems.append(f"{key}: must be a positive integer, got {v!r}")
    if problems:
        return 0, 0, 0, problems
    if mbs is None and tbs is None:
        return 0, 0, 0, ["train_micro_batch_size_per_gpu or train_batch_size: at least one is required"]
    if mbs is None:
        gas = gas or 1
        if tbs % (gas * world_size):
            return 0, 0, 0, [f"train_batch_size={tbs} is not divisible by gradient_accumulation_steps={gas} "
                             f"x world size {world_size}"]
        mbs = tbs // (gas * world_size)
    elif tbs is None:
        gas = gas or 1
        tbs = mbs * gas * world_size
    elif gas is None:
        if tbs % (mbs * world_size):
            return 0, 0, 0, [f"train_batch_size={tbs} is not divisible by train_micro_batch_size_per_gpu={mbs} "
                             f"x world size {world_size}"]
        gas = tbs // (mbs * world_size)
    if tbs != mbs * gas * world_size:
        problems.append(
            f"train_batch_size={tbs} does not equal train_micro_batch_size_per_gpu={mbs} x "
            f"gradient_accumulation_steps={gas} x world size {world_size} (= {mbs * gas * world_size}); "
            f"drop train_batch_size to let it be derived, or change one of the others")
    return tbs, mbs, gas, problems


def inspect_ds_config(cfg: dict, world_size: int, has_gpu: bool,
                      source: str = "deepspeed config") -> tuple[dict | None, list[Problem]]:
    """Every problem of a DeepSpeed config, and a copy of it with the batch triple made explicit.

    Args:
        cfg: DeepSpeed config dict (not modified).
        world_size: number of data-parallel processes.
        has_gpu: whether the run's device has a GPU (fp16/bf16 need one).
        source: the config's file, named in each problem.

    Returns:
        (resolved, problems): ``resolved`` is None when a problem other than a ``hardware`` one exists
        (the batch layout or ZeRO stage cannot be trusted then); ``problems`` are in the order
        :func:`check_ds_config` reports them.
    """
    cfg = copy.deepcopy(cfg)
    tbs, mbs, gas, batch = resolve_batch(cfg, world_size)
    problems = [Problem("config", p, source) for p in batch]
    fp16 = bool(cfg.get("fp16", {}).get("enabled", False))
    bf16 = bool(cfg.get("bf16", {}).get("enabled", False))
    if fp16 and bf16:
        problems.append(Problem("config", "fp16.enabled and bf16.enabled: choose one", source))
    if (fp16 or bf16) and not has_gpu:
        problems.append(Problem("hardware", f"{'fp16' if fp16 else 'bf16'}.enabled: mixed precision needs a GPU; "
                                            f"on CPU DeepSpeed trains in fp32 (use ds_configs/cpu_*.json)", source))
    stage = cfg.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        problems.append(Problem("config", f"zero_optimization.stage: must be 0, 1, 2 or 3, got {stage!r}", source))
    opt = cfg.get("optimizer")
    if not isinstance(opt, dict) or "type" not in opt:
        problems.append(Problem("config", "optimizer: a section {\"type\": \"AdamW\", \"params\": {...}} is required",
                                source))
    elif str(opt["type"]).lower() not in _KNOWN_OPTIMIZERS:
        problems.append(Problem("config", f"optimizer.type: unknown optimizer {opt['type']!r}", source))
    if any(p.category != "hardware" for p in problems):
        return None, problems
    cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"] = tbs, mbs, gas
    return cfg, problems


def check_ds_config(cfg: dict, world_size: int, has_gpu: bool, source: str = "deepspeed config") -> dict:
    """Validate a DeepSpeed config and return a copy with the batch triple made explicit.

    Raises:
        ConfigError: batch arithmetic does not hold; fp16/bf16 requested without a GPU; both fp16 and
            bf16 on; ZeRO stage outside 0–3; optimizer section missing or of an unknown type.
    """
    resolved, problems = inspect_ds_config(cfg, world_size, has_gpu, source)
    if problems:
        raise ConfigError([p.message for p in problems], source=source)
    return resolved


def zero_stage(cfg: dict) -> int:
    """ZeRO stage of a DeepSpeed config (0 when absent)."""
    return int(cfg.get("zero_optimization", {}).get("stage", 0))


def precision(cfg: dict) -> str:
    """``'fp16'``, ``'bf16'`` or ``'fp32'`` as configured."""
    if cfg.get("fp16", {}).get("enabled", False):
        return "fp16"
    if cfg.get("bf16", {}).get("enabled", False):
        return "bf16"
    return "fp32"
