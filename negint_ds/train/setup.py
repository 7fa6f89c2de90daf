"""Everything checked before training starts: configs, run directory, data, vocabulary.

All checks run on every rank *before* anything is written, so bad input stops the run with a message
that names the file, field or value, and nothing already on disk is touched.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass

import torch
import yaml

from ..config import (ConfigError, ExperimentConfig, apply_overrides, check_ds_config, from_mapping, load_experiment,
                      read_ds_config, read_mapping, to_mapping, zero_stage)
from ..data.batches import DataError, min_stream_tokens
from ..data.binarized import BinarizedError, TokenStream, open_binarized
from ..data.prepare import check_prepared
from ..data.vocab import Vocabulary, VocabularyError
from .run_dir import RunDir

#: Fields that may change when resuming (they do not alter what the model sees at a given step).
RESUMABLE_OVERRIDES = {"train.max_steps", "train.log_every", "train.eval_every", "train.save_every",
                       "train.keep_checkpoints"}
#: DeepSpeed keys that may differ on resume (logging only).
_DS_COSMETIC = {"tensorboard", "steps_per_print", "wall_clock_breakdown", "monitor_config", "csv_monitor",
                "wandb", "comet", "flops_profiler"}


@dataclass
class RunArgs:
    """Command-line arguments of the pretraining launcher."""

    run_dir: str
    config: str | None = None
    deepspeed_config: str | None = None
    overrides: list[str] = dataclasses.field(default_factory=list)
    resume: bool = False
    overwrite: bool = False
    progress: bool = True


@dataclass
class Prepared:
    """The checked inputs of a run."""

    cfg: ExperimentConfig
    ds_cfg: dict
    paths: RunDir
    manifest: dict
    vocab: Vocabulary
    train_streams: list[TokenStream]
    valid_streams: list[TokenStream]


def resolve_configs(args: RunArgs, world_size: int, paths: RunDir) -> tuple[ExperimentConfig, dict]:
    """The experiment and DeepSpeed configs of this run: from the recipe (new run) or the run dir (resume).

    Raises:
        ConfigError: bad recipe or DeepSpeed config; on resume, an attempt to change a field that would
            make the continuation differ from the original run.
    """
    has_gpu = torch.cuda.is_available()
    if not args.resume:
        if not args.config:
            raise ConfigError(["--config is required for a new run (a recipe file or built-in recipe name)"],
                              source="command line")
        if not args.deepspeed_config:
            raise ConfigError(["--deepspeed_config is required for a new run (see ds_configs/)"], source="command line")
        cfg = load_experiment(args.config, args.overrides)
        ds_cfg = check_ds_config(read_ds_config(args.deepspeed_config), world_size, has_gpu, args.deepspeed_config)
        return cfg, ds_cfg

    saved = read_mapping(paths.config)
    bad = sorted({o.split("=", 1)[0].strip() for o in args.overrides} - RESUMABLE_OVERRIDES)
    if bad:
        raise ConfigError([f"--set {k}: cannot change on --resume (allowed: {sorted(RESUMABLE_OVERRIDES)})"
                           for k in bad], source=paths.config)
    if args.config:
        new = to_mapping(load_experiment(args.config, []))
        diff = _diff(saved, new)
        if diff:
            raise ConfigError([f"{k}: --config differs from the run's config.yaml; drop --config to resume as saved"
                               for k in diff], source=args.config)
    cfg = from_mapping(ExperimentConfig, apply_overrides(copy.deepcopy(saved), args.overrides), paths.config, "config")
    saved_ds = read_ds_config(paths.ds_config)
    src = args.deepspeed_config or paths.ds_config
    ds_cfg = check_ds_config(read_ds_config(src), world_size, has_gpu, src)
    diff = [k for k in _diff(saved_ds, ds_cfg) if k.split(".")[0] not in _DS_COSMETIC]
    if diff:
        raise ConfigError([f"{k}: differs from the run's ds_config.json; the resumed run would not continue "
                           f"the original (a different world size changes train_batch_size arithmetic)" for k in diff],
                          source=src)
    return cfg, ds_cfg


def _diff(a, b, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def prepare_run(args: RunArgs, world_size: int) -> Prepared:
    """Run every pre-flight check (identically on every rank); write nothing.

    Raises:
        RunDirError, ConfigError, DataPrepError, VocabularyError, BinarizedError: see the messages.
    """
    paths = RunDir(args.run_dir)
    paths.check(args.resume, args.overwrite)
    cfg, ds_cfg = resolve_configs(args, world_size, paths)
    if cfg.model.has_language_specific and zero_stage(ds_cfg) == 3:
        raise ConfigError(["zero_optimization.stage: ZeRO-3 partitions every module parameter, but the language-"
                           "specific parameters φ (model.language_specific / language adapters) are optimised "
                           "outside DeepSpeed on whole tensors; use ZeRO stage 0, 1 or 2"],
                          source=args.deepspeed_config or paths.ds_config)
    manifest = check_prepared(cfg.data)
    vocab = Vocabulary(os.path.join(cfg.data.dir, manifest["vocab"]["file"]))
    if vocab.sha256 != manifest["vocab"]["sha256"]:
        raise VocabularyError(f"{vocab.path} does not match {cfg.data.dir}/manifest.json (SHA-256 differs); "
                              f"re-run prepare with --overwrite")
    if cfg.model.vocab_size is not None and cfg.model.vocab_size != vocab.size:
        raise ConfigError([f"model.vocab_size={cfg.model.vocab_size} but {vocab.path} has {vocab.size} pieces; "
                           f"remove model.vocab_size or match data.vocab.size"], source="config")
    train, valid = [], []
    for lang in cfg.lang_ids:
        files = manifest["languages"][lang]["splits"]
        for split, bucket in (("train", train), ("valid", valid)):
            bucket.append(open_binarized(os.path.join(cfg.data.dir, files[split]["file"]), vocab.sha256, vocab.size))
    check_data_fits(cfg, ds_cfg, world_size, train, valid)
    return Prepared(cfg, ds_cfg, paths, manifest, vocab, train, valid)


def check_data_fits(cfg: ExperimentConfig, ds_cfg: dict, world_size: int, train: list[TokenStream],
                    valid: list[TokenStream]) -> None:
    """Refuse, before anything is written, data too short for the configured windows and batches.

    Raises:
        DataError: listing every language whose split is too short, or an impossible meta batch layout.
    """
    L, problems, need = cfg.train.seq_len, [], min_stream_tokens(cfg.train.seq_len)
    for lang, tr, va in zip(cfg.lang_ids, train, valid):
        if tr.num_tokens < need:
            problems.append(f"{lang}: {tr.num_tokens} train tokens, need >= {need} for train.seq_len={L}")
        if va.num_tokens < L:
            problems.append(f"{lang}: {va.num_tokens} valid tokens, fewer than train.seq_len={L} (raise "
                            f"data.split.valid_fraction or lower train.seq_len)")
    m = cfg.meta
    if m.enabled:
        micro = m.val_micro_batch or ds_cfg["train_micro_batch_size_per_gpu"]
        if m.val_batch_size % (micro * world_size):
            problems.append(f"meta.val_batch_size={m.val_batch_size} must be a multiple of the validation "
                            f"micro-batch ({micro}) x world size ({world_size})")
        if m.val_source == "valid":
            short = [l for l, va in zip(cfg.lang_ids, valid) if va.num_tokens < need]
            if short:
                problems.append(f"meta.val_source=valid: valid splits of {short} have fewer than {need} tokens")
    if problems:
        raise DataError("data does not fit the configuration:\n  - " + "\n  - ".join(problems))


def check_checkpoint_matches(client_state: dict, prep: Prepared) -> None:
    """Refuse a checkpoint written with another vocabulary, data or language set.

    Raises:
        BinarizedError: vocabulary or data fingerprint differ.
        ConfigError: the language list differs.
    """
    if client_state.get("vocab_sha256") != prep.vocab.sha256:
        raise BinarizedError(f"checkpoint was trained with vocabulary {str(client_state.get('vocab_sha256'))[:12]}…, "
                             f"but {prep.vocab.path} is {prep.vocab.sha256[:12]}…: they do not match")
    if client_state.get("data_fingerprint") != prep.manifest["fingerprint"]:
        raise BinarizedError("checkpoint was trained on differently prepared data (data fingerprint differs)")
    if client_state.get("lang_ids") != prep.cfg.lang_ids:
        raise ConfigError([f"checkpoint languages {client_state.get('lang_ids')} != config {prep.cfg.lang_ids}"],
                          source=prep.paths.config)


def dump_yaml(obj) -> str:
    """A config dataclass as YAML, in field order (what config.yaml holds)."""
    return yaml.safe_dump(to_mapping(obj), sort_keys=False, allow_unicode=True)


__all__ = ["Prepared", "RESUMABLE_OVERRIDES", "RunArgs", "check_checkpoint_matches", "dump_yaml", "prepare_run",
           "resolve_configs", "VocabularyError"]
