"""The run directory: resolved configs, logs, metrics, TensorBoard, checkpoints, final report.

Layout::

    config.yaml        resolved experiment config (what --resume reuses)
    ds_config.json     resolved DeepSpeed config (batch triple explicit)
    run.json           command line, versions, world size, data fingerprint
    train.log          human-readable log (rank 0)
    metrics.jsonl      every train/valid record; train.csv / valid.csv the same as tables
    tensorboard/       DeepSpeed monitor events
    checkpoints/       DeepSpeed checkpoints <tag>/ and latest.json (the last *complete* one)
    final_ppl.md/json  per-language validation perplexity at the end; ppl_curves.png (paper Fig. 2)
    export/            model.safetensors + model.json + spm.model for fine-tuning

A checkpoint counts only once ``latest.json`` names it; that file is replaced atomically after every
rank has finished writing, so a crash mid-save leaves the previous checkpoint in charge.
"""
from __future__ import annotations

import json
import os
import shutil

from ..atomic import atomic_write_json, atomic_write_text


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (exists without --resume/--overwrite, nothing to resume)."""


class RunDir:
    """Paths and checkpoint bookkeeping of one run directory."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        j = lambda *p: os.path.join(self.root, *p)  # noqa: E731
        self.config, self.ds_config, self.meta, self.log = j("config.yaml"), j("ds_config.json"), j("run.json"), j("train.log")
        self.metrics, self.train_csv, self.valid_csv = j("metrics.jsonl"), j("train.csv"), j("valid.csv")
        self.tensorboard, self.checkpoints, self.export = j("tensorboard"), j("checkpoints"), j("export")
        self.latest_file = j("checkpoints", "latest.json")
        self.final_md, self.final_json, self.curves = j("final_ppl.md"), j("final_ppl.json"), j("ppl_curves.png")

    def exists(self) -> bool:
        return os.path.isdir(self.root) and bool(os.listdir(self.root))

    def check(self, resume: bool, overwrite: bool) -> None:
        """Decide, before anything is written, whether this run may use the directory.

        Raises:
            RunDirError: it exists and neither ``resume`` nor ``overwrite`` was asked; ``resume`` was asked
                but there is no run there; both flags were given.
        """
        if resume and overwrite:
            raise RunDirError("--resume and --overwrite contradict each other; choose one")
        if resume:
            if not os.path.isfile(self.config):
                raise RunDirError(f"--resume: {self.root} holds no run (no config.yaml)")
            return
        if self.exists() and not overwrite:
            latest = self.latest()
            what = f"a checkpoint at step {latest['step']}" if latest else "files"
            raise RunDirError(f"run directory {self.root} already exists and holds {what}; pass --resume to "
                              f"continue it, --overwrite to delete it and start over, or choose another --run_dir")
        if overwrite and self.exists() and not self.is_run():
            raise RunDirError(f"--overwrite refuses to delete {self.root}: it does not look like a negint_ds run "
                              f"directory (no config.yaml); delete it yourself or choose another --run_dir")
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise RunDirError(f"--run_dir {self.root} is a file, not a directory")

    def is_run(self) -> bool:
        """True if the directory was made by a run (every run writes config.yaml as soon as it exists)."""
        return os.path.isfile(self.config)

    def create(self, overwrite: bool, config_yaml: str, ds_config: dict) -> None:
        """Make the directory with its configs (rank 0), replacing an earlier run when ``overwrite`` was asked.

        The configs are written at once, so a run that fails later (engine build, out of memory) leaves a
        directory that ``--resume`` (from step 0) and ``--overwrite`` both accept.
        """
        if overwrite and self.is_run():
            shutil.rmtree(self.root)
        for d in (self.root, self.checkpoints, self.tensorboard):
            os.makedirs(d, exist_ok=True)
        atomic_write_text(self.config, config_yaml)
        atomic_write_json(self.ds_config, ds_config)

    def latest(self) -> dict | None:
        """``{"tag": ..., "step": ...}`` of the newest complete checkpoint, or None."""
        if not os.path.isfile(self.latest_file):
            return None
        with open(self.latest_file, encoding="utf-8") as f:
            return json.load(f)

    def commit_checkpoint(self, tag: str, step: int, keep: int) -> list[str]:
        """Mark ``tag`` complete (atomically) and delete all but the newest ``keep`` older checkpoints.

        Returns:
            Tags deleted.
        """
        history = (self.latest() or {}).get("history", [])
        history = [h for h in history if h["tag"] != tag] + [{"tag": tag, "step": step}]
        atomic_write_json(self.latest_file, {"tag": tag, "step": step, "history": history[-(keep + 1):]})
        removed = []
        for h in history[:-(keep + 1)]:
            shutil.rmtree(os.path.join(self.checkpoints, h["tag"]), ignore_errors=True)
            removed.append(h["tag"])
        return removed
