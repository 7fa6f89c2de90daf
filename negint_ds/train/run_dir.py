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

A checkpoint is complete once its manifest (:mod:`.ckpt_manifest`) is written, after every rank's
files; ``latest.json`` then names it (replaced atomically). ``--resume`` takes the newest checkpoint
that verifies against its manifest (:meth:`RunDir.resume_point`), says which others it skipped and why,
and moves interrupted or damaged ones to ``checkpoints/quarantine/`` instead of deleting them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field

from ..atomic import atomic_write_json, atomic_write_text
from .ckpt_manifest import MANIFEST, verify

_TAG = re.compile(r"^step_\d+$")
QUARANTINE = "quarantine"


@dataclass
class ResumePoint:
    """Where ``--resume`` continues: checkpoint ``tag`` at ``step`` (tag None: nothing saved yet, step 0).

    Attributes:
        skipped: (tag, reason) for newer checkpoints that did not verify.
        quarantine: checkpoint directories to move aside before training resumes (interrupted or damaged).
        manifest: the chosen checkpoint's manifest (None for a checkpoint written before manifests).
    """

    tag: str | None
    step: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    quarantine: list[str] = field(default_factory=list)
    manifest: dict | None = None

    def describe(self) -> str:
        """One log line: which checkpoint, and what was skipped."""
        head = (f"resuming from checkpoint {self.tag} (step {self.step})" if self.tag
                else "resuming at step 0 (no checkpoint was completed)")
        if self.skipped:
            head += "; skipped " + "; ".join(f"{t}: {r}" for t, r in self.skipped)
        return head


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
            try:
                latest = self.latest()
            except RunDirError:
                latest = None
            what = f"a checkpoint at step {latest['step']}" if latest and latest.get("tag") else "files"
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
        # From here on a missing latest.json means it was deleted, never "nothing saved yet": an
        # interrupted first save then still resumes, and a deleted file is refused (resume_point).
        atomic_write_json(self.latest_file, {"tag": None, "step": 0, "history": []})

    def latest(self) -> dict | None:
        """``{"tag": ..., "step": ..., "history": [...]}`` of the newest committed checkpoint (``tag`` None:
        none yet), or None when the file does not exist.

        Raises:
            RunDirError: ``latest.json`` exists but cannot be read.
        """
        if not os.path.isfile(self.latest_file):
            return None
        try:
            with open(self.latest_file, encoding="utf-8") as f:
                latest = json.load(f)
            if not isinstance(latest, dict) or not isinstance(latest.get("tag", 0), (str, type(None))):
                raise ValueError("no \"tag\" field")
            return latest
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise RunDirError(f"{self.latest_file} is damaged ({e}); pass --resume_from <tag> to continue from one "
                              f"of {self.checkpoint_tags() or 'the checkpoints'}") from None

    def check_run_files(self) -> None:
        """On ``--resume``: ``run.json`` and ``metrics.jsonl`` must parse before anything is written.

        A torn last line of ``metrics.jsonl`` (a kill mid-append) is allowed: the resume rewrites the file.

        Raises:
            RunDirError: naming the file (and line) that is damaged.
        """
        from .metrics import read_jsonl

        if os.path.isfile(self.meta):
            try:
                with open(self.meta, encoding="utf-8") as f:
                    if not isinstance(json.load(f), dict):
                        raise ValueError("not a JSON object")
            except (OSError, UnicodeDecodeError, ValueError) as e:
                raise RunDirError(f"{self.meta} is damaged ({e}); it records the run's sessions: restore it, or "
                                  f"delete it to start a fresh record") from None
        if os.path.isfile(self.metrics):
            try:
                read_jsonl(self.metrics)
            except ValueError as e:
                raise RunDirError(str(e)) from None

    def checkpoint_tags(self) -> list[str]:
        """Tags of the ``step_*`` directories under ``checkpoints/`` (complete or not), oldest first."""
        if not os.path.isdir(self.checkpoints):
            return []
        tags = [t for t in os.listdir(self.checkpoints)
                if _TAG.match(t) and os.path.isdir(os.path.join(self.checkpoints, t))]
        return sorted(tags, key=lambda t: int(t.split("_")[1]))

    def resume_point(self, tag: str | None = None) -> ResumePoint:
        """The checkpoint ``--resume`` continues from: the newest that verifies (or ``tag``); writes nothing.

        A checkpoint directory without a manifest counts only if ``latest.json`` names it (written before
        manifests existed); otherwise it is an interrupted save.

        Raises:
            RunDirError: ``tag`` is not a verified checkpoint; checkpoints exist but ``latest.json`` is
                missing or damaged (never a silent restart from step 0); none of them verifies.
        """
        tags = self.checkpoint_tags()
        check = lambda t: verify(os.path.join(self.checkpoints, t))  # noqa: E731 - hashes every file: only as needed
        unfinished = lambda t: not os.path.isfile(os.path.join(self.checkpoints, t, MANIFEST))  # noqa: E731
        step_of = lambda t: int(t.split("_")[1])  # noqa: E731
        if tag is not None:
            if tag not in tags:
                raise RunDirError(f"--resume_from {tag}: no such checkpoint in {self.checkpoints} (there are {tags})")
            v = check(tag)
            if not v.ok:
                raise RunDirError(f"--resume_from {tag}: it does not verify: {v.reason}")
            return ResumePoint(tag, v.step, quarantine=[t for t in tags if step_of(t) > v.step or unfinished(t)],
                               manifest=v.manifest)
        if not os.path.isfile(self.latest_file):
            if tags:
                good = [t for t in reversed(tags) if check(t).ok]
                raise RunDirError(f"{self.latest_file} is missing but {self.checkpoints} holds {tags}; refusing to "
                                  f"restart from step 0 over them. Pass --resume_from <tag> to continue from a "
                                  f"verified checkpoint ({good or 'none verifies'}), or restore latest.json")
            return ResumePoint(None, 0)
        latest = self.latest()
        if not tags:
            if latest.get("tag"):
                raise RunDirError(f"{self.latest_file} names checkpoint {latest['tag']} but {self.checkpoints} holds "
                                  f"none; refusing to restart from step 0. Restore the checkpoint, or start over "
                                  f"with --overwrite")
            return ResumePoint(None, 0)  # nothing saved yet
        named = {latest["tag"], *(h["tag"] for h in latest.get("history", []))}
        skipped, quarantine = [], []
        for i, t in enumerate(reversed(tags)):  # newest first; older ones are not read once one verifies
            v = check(t)
            if v.ok or (unfinished(t) and t in named):  # the latter: written before checkpoint manifests
                older = tags[:len(tags) - 1 - i]
                return ResumePoint(t, v.step if v.ok else step_of(t), skipped,
                                   quarantine + [u for u in older if unfinished(u) and u not in named], v.manifest)
            skipped.append((t, v.reason))
            quarantine.append(t)
        if latest.get("tag") is None:  # the first save never completed: nothing was lost, start again
            return ResumePoint(None, 0, skipped, quarantine)
        reasons = "; ".join(f"{t}: {r}" for t, r in skipped) or "none found"
        raise RunDirError(f"no checkpoint in {self.checkpoints} verifies ({reasons}); nothing to resume from. "
                          f"Restore the files, or start over with --overwrite")

    def apply_resume_point(self, point: ResumePoint, keep: int) -> list[str]:
        """Move the point's interrupted/damaged checkpoints to ``checkpoints/quarantine/`` and point
        ``latest.json`` at its checkpoint (rank 0, once the run has been accepted).

        Returns:
            The tags moved aside.
        """
        moved = []
        for t in point.quarantine:
            src = os.path.join(self.checkpoints, t)
            if not os.path.isdir(src):
                continue
            dst = os.path.join(self.checkpoints, QUARANTINE, t)
            if os.path.exists(dst):  # an earlier interrupted save of the same step: superseded
                shutil.rmtree(dst)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.replace(src, dst)
            moved.append(t)
        for name in os.listdir(self.checkpoints) if os.path.isdir(self.checkpoints) else []:
            if name.startswith(".") and name.endswith(".tmp"):  # torn atomic writes of latest.json
                os.unlink(os.path.join(self.checkpoints, name))
        if point.tag is not None:
            kept = [t for t in self.checkpoint_tags() if int(t.split("_")[1]) <= point.step]
            history = [{"tag": t, "step": int(t.split("_")[1])} for t in kept][-(keep + 1):]
            atomic_write_json(self.latest_file, {"tag": point.tag, "step": point.step, "history": history})
        return moved

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
