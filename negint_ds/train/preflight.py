"""Every check made before a run starts, written once for the real run and for ``--dry_run``.

:func:`run_preflight` runs the checks in a fixed order. Strict (the real run, through
:func:`~negint_ds.train.setup.prepare_run`) it stops at the first failing check and raises that check's
usual error (ConfigError, RunDirError, DataPrepError, ...), so the launcher's messages and exit codes are
unchanged. Collecting (the dry run) it goes on past failures, skipping only what depends on a failed
check, and returns every :class:`~negint_ds.problems.Problem` with its category. Nothing here writes.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..config import (ConfigError, ExperimentConfig, apply_overrides, from_mapping, inspect_ds_config,
                      load_experiment, read_ds_config, read_mapping, to_mapping, zero_stage)
from ..data.batches import DataError, min_stream_tokens
from ..data.binarized import BinarizedError, TokenStream, open_binarized
from ..data.prepare import DataPrepError, check_prepared
from ..data.vocab import Vocabulary, VocabularyError
from ..meta.val_batches import resolve_val_micro
from ..problems import Problem
from .run_dir import ResumePoint, RunDir, RunDirError

if TYPE_CHECKING:
    from .setup import RunArgs

#: Errors that mean bad input (exit code 2, nothing written); anything else is a bug or an I/O failure.
USER_ERRORS = (ConfigError, DataPrepError, DataError, VocabularyError, BinarizedError, RunDirError)
#: Fields that may change when resuming (they do not alter what the model sees at a given step).
RESUMABLE_OVERRIDES = {"train.max_steps", "train.log_every", "train.eval_every", "train.save_every",
                       "train.keep_checkpoints"}
#: DeepSpeed keys that may differ on resume (logging only).
_DS_COSMETIC = {"tensorboard", "steps_per_print", "wall_clock_breakdown", "monitor_config", "csv_monitor",
                "wandb", "comet", "flops_profiler"}
_CATEGORY = {RunDirError: "run_dir", ConfigError: "config", DataPrepError: "data", DataError: "data",
             VocabularyError: "data", BinarizedError: "data"}


def problems_from(error: Exception) -> list[Problem]:
    """The problems a user error stands for (one per entry of a ConfigError), categorised by its type.

    Raises:
        TypeError: ``error`` is not one of :data:`USER_ERRORS`.
    """
    for cls, category in _CATEGORY.items():
        if isinstance(error, cls):
            if isinstance(error, ConfigError):
                return [Problem(category, p, error.source) for p in error.problems]
            return [Problem(category, str(error))]
    raise TypeError(f"not a user error: {type(error).__name__}: {error}")


class Checks:
    """Runs checks strictly (raise at the first failure, as the real run) or collecting every problem.

    Args:
        strict: raise instead of collecting.
        problems: the list to collect into (default: a new one); ``self.problems`` is that list.
    """

    def __init__(self, strict: bool, problems: list[Problem] | None = None):
        self.strict = strict
        self.problems: list[Problem] = [] if problems is None else problems

    def call(self, fn: Callable[..., Any], *args) -> tuple[bool, Any]:
        """``(True, fn(*args))``, or ``(False, None)`` once the user error ``fn`` raised is collected.

        Raises:
            Strict: whatever ``fn`` raises. Collecting: only errors outside :data:`USER_ERRORS`.
        """
        if self.strict:
            return True, fn(*args)
        try:
            return True, fn(*args)
        except USER_ERRORS as e:
            self.problems += problems_from(e)
            return False, None

    def add(self, problems: list[Problem], error: Callable[[list[Problem]], Exception]) -> bool:
        """Record one check's problems; True when there are none.

        Raises:
            Strict: ``error(problems)`` when there are problems.
        """
        if problems and self.strict:
            raise error(problems)
        self.problems += problems
        return not problems


def _config_error(source: str) -> Callable[[list[Problem]], Exception]:
    return lambda ps: ConfigError([p.message for p in ps], source=source)


def _data_error(problems: list[Problem]) -> DataError:
    return DataError("data does not fit the configuration:\n  - " + "\n  - ".join(p.message for p in problems))


@dataclass
class Preflight:
    """What the checks found. A field is None when a check it depends on failed (collecting only)."""

    paths: RunDir
    problems: list[Problem] = field(default_factory=list)
    cfg: ExperimentConfig | None = None
    ds_cfg: dict | None = None
    #: The DeepSpeed config file in use (``--deepspeed_config``, or the run's ds_config.json on resume).
    ds_source: str | None = None
    manifest: dict | None = None
    vocab: Vocabulary | None = None
    train_streams: list[TokenStream] | None = None
    valid_streams: list[TokenStream] | None = None
    #: On ``--resume``: the checkpoint to continue from (:meth:`~negint_ds.train.run_dir.RunDir.resume_point`).
    resume: ResumePoint | None = None


def run_preflight(args: RunArgs, world_size: int, has_gpu: bool, strict: bool) -> Preflight:
    """Run every pre-flight check of a run: run directory, configs, their cross-checks, data; write nothing.

    Args:
        args: the launcher's arguments.
        world_size: data-parallel processes (batch arithmetic, meta-validation layout).
        has_gpu: whether the run's device has a GPU (fp16/bf16 need one).
        strict: stop at the first failing check and raise its error (the real run); else collect.

    Returns:
        The checked inputs; collecting, ``problems`` lists every problem found.

    Raises:
        Strict: RunDirError, ConfigError, DataPrepError, VocabularyError, BinarizedError, DataError.
    """
    pf = Preflight(RunDir(args.run_dir))
    checks = Checks(strict, pf.problems)
    run_dir_ok, _ = checks.call(pf.paths.check, args.resume, args.overwrite)
    if args.resume and not run_dir_ok:
        return pf  # there is no saved run to resolve the configs from
    if args.resume:
        checks.call(pf.paths.check_run_files)
        pf.resume = checks.call(pf.paths.resume_point, args.resume_from)[1]
    pf.cfg, pf.ds_cfg, pf.ds_source = resolve(args, world_size, has_gpu, pf.paths, checks)
    if pf.cfg is None:
        return pf
    if pf.ds_cfg is not None:
        checks.add(zero3_problems(pf.cfg, pf.ds_cfg, pf.ds_source), _config_error(pf.ds_source))
    _load_data(pf, checks, args.config if not args.resume else None)
    if pf.resume is not None and pf.resume.manifest is not None and pf.vocab is not None:
        checks.add(checkpoint_problems(pf.resume.manifest, pf.resume.tag, pf.cfg, pf.manifest, pf.vocab),
                   lambda ps: BinarizedError("\n".join(p.message for p in ps)))
    if pf.train_streams is not None:
        checks.add(fit_problems(pf.cfg, pf.ds_cfg, world_size, pf.train_streams, pf.valid_streams), _data_error)
    elif pf.ds_cfg is not None:  # collecting only: the layout does not depend on the data
        checks.add(meta_layout_problems(pf.cfg, pf.ds_cfg, world_size), _data_error)
    return pf


def resolve(args: RunArgs, world_size: int, has_gpu: bool, paths: RunDir,
            checks: Checks) -> tuple[ExperimentConfig | None, dict | None, str | None]:
    """The experiment and DeepSpeed configs: from the recipe (new run) or the run directory (resume).

    Returns:
        (cfg, ds_cfg, ds_source); cfg / ds_cfg are None when they could not be resolved (collecting).

    Raises:
        Strict: ConfigError for a bad recipe or DeepSpeed config, and on resume for an attempt to change a
            field that would make the continuation differ from the original run.
    """
    if args.resume:
        return _resolve_resume(args, world_size, has_gpu, paths, checks)
    for flag, value, hint in (("--config", args.config, "a recipe file or built-in recipe name"),
                              ("--deepspeed_config", args.deepspeed_config, "see ds_configs/")):
        if not value:
            checks.add([Problem("config", f"{flag} is required for a new run ({hint})", "command line")],
                       _config_error("command line"))
    cfg = checks.call(load_experiment, args.config, args.overrides)[1] if args.config else None
    ds_cfg = _ds_config(args.deepspeed_config, world_size, has_gpu, checks) if args.deepspeed_config else None
    return cfg, ds_cfg, args.deepspeed_config


def _resolve_resume(args: RunArgs, world_size: int, has_gpu: bool, paths: RunDir,
                    checks: Checks) -> tuple[ExperimentConfig | None, dict | None, str]:
    src = args.deepspeed_config or paths.ds_config
    ok, saved = checks.call(read_mapping, paths.config)
    if not ok:
        return None, None, src
    keys = lambda o: o.split("=", 1)[0].strip()  # noqa: E731
    bad = sorted({keys(o) for o in args.overrides} - RESUMABLE_OVERRIDES)
    checks.add([Problem("config", f"--set {k}: cannot change on --resume (allowed: {sorted(RESUMABLE_OVERRIDES)})",
                        paths.config) for k in bad], _config_error(paths.config))
    if args.config:
        ok, new = checks.call(load_experiment, args.config, [])
        diff = _diff(saved, to_mapping(new)) if ok else []
        checks.add([Problem("config", f"{k}: --config differs from the run's config.yaml; drop --config to resume "
                                      f"as saved", args.config) for k in diff], _config_error(args.config))
    overrides = [o for o in args.overrides if keys(o) not in bad]  # collecting: go on with the allowed ones
    _, cfg = checks.call(lambda: from_mapping(ExperimentConfig, apply_overrides(copy.deepcopy(saved), overrides),
                                              paths.config, "config"))
    saved_ok, saved_ds = checks.call(read_ds_config, paths.ds_config)
    ds_cfg = _ds_config(src, world_size, has_gpu, checks)
    if saved_ok and ds_cfg is not None:
        diff = [k for k in _diff(saved_ds, ds_cfg) if k.split(".")[0] not in _DS_COSMETIC]
        checks.add([Problem("config", f"{k}: differs from the run's ds_config.json; the resumed run would not "
                                      f"continue the original (a different world size changes train_batch_size "
                                      f"arithmetic)", src) for k in diff], _config_error(src))
    return cfg, ds_cfg, src


def _ds_config(path: str, world_size: int, has_gpu: bool, checks: Checks) -> dict | None:
    ok, raw = checks.call(read_ds_config, path)
    if not ok:
        return None
    resolved, problems = inspect_ds_config(raw, world_size, has_gpu, path)
    checks.add(problems, _config_error(path))
    return resolved


def _diff(a, b, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def checkpoint_problems(ckpt: dict, tag: str, cfg: ExperimentConfig, data_manifest: dict,
                        vocab: Vocabulary) -> list[Problem]:
    """A checkpoint that does not belong to the prepared data: another vocabulary, data or language list.

    Args:
        ckpt: the checkpoint's manifest (:mod:`~negint_ds.train.ckpt_manifest`).
    """
    problems, where = [], f"checkpoint {tag}"
    fix = (f"the data in {cfg.data.dir} was prepared again since; `python -m negint_ds.prepare --config "
           f"<the run's recipe>` rebuilds identical data from identical sources, or start a new run")
    if ckpt.get("vocab_sha256") != vocab.sha256:
        problems.append(Problem("data", f"{where} was trained with vocabulary {str(ckpt.get('vocab_sha256'))[:12]}…, "
                                        f"but {vocab.path} is {vocab.sha256[:12]}…: {fix}"))
    elif ckpt.get("data_fingerprint") != data_manifest.get("fingerprint"):
        problems.append(Problem("data", f"{where} was trained on differently prepared data (data fingerprint "
                                        f"{str(ckpt.get('data_fingerprint'))[:12]}… vs {str(data_manifest.get('fingerprint'))[:12]}…): {fix}"))
    if ckpt.get("lang_ids") != cfg.lang_ids:
        problems.append(Problem("data", f"{where} has languages {ckpt.get('lang_ids')}, the config {cfg.lang_ids}"))
    return problems


def zero3_problems(cfg: ExperimentConfig, ds_cfg: dict, source: str) -> list[Problem]:
    """ZeRO-3 refused with language-specific parameters φ (optimised on whole tensors outside DeepSpeed) and with
    the gradient-conflict probe (it reads θ whole)."""
    if cfg.model.has_language_specific and zero_stage(ds_cfg) == 3:
        return [Problem("config", "zero_optimization.stage: ZeRO-3 partitions every module parameter, but the "
                                  "language-specific parameters φ (model.language_specific / language adapters) are "
                                  "optimised outside DeepSpeed on whole tensors; use ZeRO stage 0, 1 or 2", source)]
    if cfg.analysis.grad_conflict.enabled and zero_stage(ds_cfg) == 3:
        return [Problem("config", "zero_optimization.stage: analysis.grad_conflict reads θ whole on every rank, which "
                                  "ZeRO-3 partitions; use ZeRO stage 0, 1 or 2 for a run with the gradient-conflict "
                                  "probe (or probe its checkpoints offline: launchers/analyze.py grad_conflict)", source)]
    return []


def _load_data(pf: Preflight, checks: Checks, recipe: str | None = None) -> None:
    """Fill in manifest, vocabulary and token streams of ``pf.cfg.data.dir`` as far as they check out."""
    cfg = pf.cfg
    ok, manifest = checks.call(check_prepared, cfg.data, recipe or pf.paths.config)
    if not ok:
        return
    pf.manifest = manifest
    ok, vocab = checks.call(Vocabulary, os.path.join(cfg.data.dir, manifest["vocab"]["file"]))
    if not ok:
        return
    if vocab.sha256 != manifest["vocab"]["sha256"]:
        checks.add([Problem("data", f"{vocab.path} does not match {cfg.data.dir}/manifest.json (SHA-256 differs); "
                                    f"re-run prepare with --overwrite")], lambda ps: VocabularyError(ps[0].message))
        return  # every token file would be refused as built with another vocabulary
    pf.vocab = vocab
    if cfg.model.vocab_size is not None and cfg.model.vocab_size != vocab.size:
        checks.add([Problem("config", f"model.vocab_size={cfg.model.vocab_size} but {vocab.path} has {vocab.size} "
                                      f"pieces; remove model.vocab_size or match data.vocab.size", "config")],
                   _config_error("config"))
    train, valid, all_ok = [], [], True
    for lang in cfg.lang_ids:
        files = manifest["languages"][lang]["splits"]
        for split, bucket in (("train", train), ("valid", valid)):
            ok, stream = checks.call(open_binarized, os.path.join(cfg.data.dir, files[split]["file"]), vocab.sha256,
                                     vocab.size)
            bucket.append(stream)
            all_ok &= ok
    if all_ok:
        pf.train_streams, pf.valid_streams = train, valid


def meta_layout_problems(cfg: ExperimentConfig, ds_cfg: dict, world_size: int) -> list[Problem]:
    """Problems with the meta-validation batch layout (:func:`~negint_ds.meta.val_batches.resolve_val_micro`)."""
    m = cfg.meta
    if not m.enabled:
        return []
    _, problems = resolve_val_micro(m.val_batch_size, m.val_micro_batch, ds_cfg["train_micro_batch_size_per_gpu"],
                                    world_size)
    return [Problem("config", p) for p in problems]


def fit_problems(cfg: ExperimentConfig, ds_cfg: dict | None, world_size: int, train: list[TokenStream],
                 valid: list[TokenStream]) -> list[Problem]:
    """Splits too short for the configured windows (``data``) and an impossible meta layout (``config``).

    Args:
        ds_cfg: the resolved DeepSpeed config, or None to skip the meta layout (it could not be resolved).
    """
    L, need = cfg.train.seq_len, min_stream_tokens(cfg.train.seq_len)
    problems = []
    for lang, tr, va in zip(cfg.lang_ids, train, valid):
        if tr.num_tokens < need:
            problems.append(Problem("data", f"{lang}: {tr.num_tokens} train tokens, need >= {need} for "
                                            f"train.seq_len={L}"))
        if va.num_tokens < L:
            problems.append(Problem("data", f"{lang}: {va.num_tokens} valid tokens, fewer than train.seq_len={L} "
                                            f"(raise data.split.valid_fraction or lower train.seq_len)"))
    m = cfg.meta
    if m.enabled:
        if ds_cfg is not None:
            problems += meta_layout_problems(cfg, ds_cfg, world_size)
        if m.val_source == "valid":
            short = [l for l, va in zip(cfg.lang_ids, valid) if va.num_tokens < need]
            if short:
                problems.append(Problem("data", f"meta.val_source=valid: valid splits of {short} have fewer than "
                                                f"{need} tokens"))
    return problems


__all__ = ["Checks", "Preflight", "checkpoint_problems", "RESUMABLE_OVERRIDES", "USER_ERRORS", "fit_problems",
           "meta_layout_problems", "problems_from", "resolve", "run_preflight", "zero3_problems"]
