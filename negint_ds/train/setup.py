"""Everything checked before training starts: configs, run directory, data, vocabulary.

All checks run on every rank *before* anything is written, so bad input stops the run with a message
that names the file, field or value, and nothing already on disk is touched. The checks themselves live
in :mod:`negint_ds.train.preflight`, shared with ``--dry_run``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import yaml

from ..config import ConfigError, ExperimentConfig, to_mapping
from ..data.binarized import BinarizedError, TokenStream
from ..data.vocab import Vocabulary, VocabularyError
from .preflight import RESUMABLE_OVERRIDES, run_preflight
from .run_dir import ResumePoint, RunDir


@dataclass
class RunArgs:
    """Command-line arguments of the pretraining launcher.

    ``dry_run``, ``target_device`` and ``world_size`` belong to ``--dry_run``
    (:func:`negint_ds.train.dry_run.dry_run`); ``world_size`` None: from the launcher's environment.
    """

    run_dir: str
    config: str | None = None
    deepspeed_config: str | None = None
    overrides: list[str] = dataclasses.field(default_factory=list)
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    dry_run: bool = False
    target_device: str = "auto"
    world_size: int | None = None
    #: ``--resume_from``: resume from this checkpoint tag instead of the newest verified one.
    resume_from: str | None = None


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
    #: On ``--resume``: where to continue (None for a new run).
    resume: ResumePoint | None = None


def prepare_run(args: RunArgs, world_size: int) -> Prepared:
    """Run every pre-flight check (identically on every rank); write nothing.

    Raises:
        RunDirError, ConfigError, DataPrepError, VocabularyError, BinarizedError, DataError: see the messages.
    """
    pf = run_preflight(args, world_size, torch.cuda.is_available(), strict=True)
    return Prepared(pf.cfg, pf.ds_cfg, pf.paths, pf.manifest, pf.vocab, pf.train_streams, pf.valid_streams, pf.resume)


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


__all__ = ["Prepared", "RESUMABLE_OVERRIDES", "RunArgs", "check_checkpoint_matches", "dump_yaml",
           "prepare_run", "VocabularyError"]
