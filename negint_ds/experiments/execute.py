"""Run a plan on this machine, one process at a time: finished stages are skipped, interrupted ones resumed, and a
failed run is recorded (exit code, log path) without stopping the others.

The experiment directory::

    spec.yaml            the resolved spec (what was asked)
    recipes/<run>.yaml   each run's resolved recipe (a changed recipe for an existing run is refused)
    runs/<run>/          each pretraining run directory (downstream/ and analysis/ inside it)
    logs/<run>.<stage>.log, logs/prepare-<data>.log, logs/report-*.log
    status.json          per run and stage: done / failed / blocked / interrupted, seconds, peak memory, log
    report.md, tables/, figures/, findings.md   (:mod:`.report`)
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import yaml

from ..atomic import atomic_write_json, atomic_write_text
from ..config.loader import read_mapping, to_mapping
from .plan import REPO, Plan, Run, Stage

log = logging.getLogger("negint_ds")


class ExperimentError(RuntimeError):
    """The experiment directory cannot be used as asked (a run's recipe changed under an existing run)."""


def status_path(plan: Plan) -> str:
    return os.path.join(plan.out_dir, "status.json")


def load_status(plan: Plan) -> dict:
    """``{run id: {stage: {"state", "seconds", "peak_rss_mib", "log", "returncode"}}}`` (empty when none yet)."""
    import json

    path = status_path(plan)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ExperimentError(f"{path} is damaged ({e}); move it aside: it is rebuilt from the run outputs "
                                  f"(finished stages are recognised by their files)") from None


def stage_state(stage: Stage) -> str:
    """``done`` (every done file exists), ``partial`` (the resume file exists) or ``todo``."""
    if stage.done and all(os.path.exists(p) for p in stage.done):
        return "done"
    if stage.resume_if and os.path.exists(stage.resume_if):
        return "partial"
    return "todo"


def log_path(plan: Plan, run: Run | None, name: str) -> str:
    return os.path.join(plan.out_dir, "logs", f"{run.id}.{name}.log" if run else f"{name}.log")


def write_inputs(plan: Plan) -> None:
    """Write ``spec.yaml`` and every run's recipe; refuse a changed recipe under an existing run directory.

    Raises:
        ExperimentError: naming each run whose recipe differs from the one its run directory was started with.
    """
    changed = []
    for run in plan.runs:
        if os.path.isfile(run.recipe_file) and os.path.isdir(run.run_dir):
            old = read_mapping(run.recipe_file)
            if old != run.recipe:
                keys = sorted(k for k in set(old) | set(run.recipe) if old.get(k) != run.recipe.get(k))
                changed.append(f"{run.id} ({', '.join(keys)} differ)")
    if changed:
        raise ExperimentError(f"the spec now gives other recipes for runs that already exist in {plan.out_dir}: "
                              f"{'; '.join(changed)}. Delete those run directories (runs/<run>) to redo them, or use "
                              f"another --out_dir")
    os.makedirs(os.path.join(plan.out_dir, "recipes"), exist_ok=True)
    os.makedirs(os.path.join(plan.out_dir, "logs"), exist_ok=True)
    atomic_write_text(os.path.join(plan.out_dir, "spec.yaml"),
                      yaml.safe_dump(to_mapping(plan.spec), sort_keys=False, allow_unicode=True))
    for run in plan.runs:
        atomic_write_text(run.recipe_file, yaml.safe_dump(run.recipe, sort_keys=False, allow_unicode=True))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _spawn(argv: list[str], log_file: str) -> tuple[int, float, float]:
    """Run ``argv`` (cwd: the repository) with its output in ``log_file``; (exit code, seconds, peak RSS in MiB).

    The peak is the largest resident set of the process and its reaped descendants (``wait4``'s ``ru_maxrss``).
    Each child gets its own free rendezvous port (``MASTER_PORT``) unless the environment sets one, so two
    experiments (or an experiment and a test run) on one machine do not collide on DeepSpeed's default 29500.
    """
    env = dict(os.environ)
    env.setdefault("MASTER_PORT", str(_free_port()))
    env["PYTHONUNBUFFERED"] = "1"
    t0 = time.time()
    with open(log_file, "a", encoding="utf-8") as f:
        f.write(f"\n$ {' '.join(argv)}\n")
        f.flush()
        p = subprocess.Popen(argv, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
        try:
            _, status, ru = os.wait4(p.pid, 0)
        except KeyboardInterrupt:
            # SIGINT from a terminal reached the child too (same process group); SIGTERM (a scheduler, kill) reached
            # only this process: pass it on. Either way the child saves a checkpoint and stops; wait for it.
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            p.wait()
            raise
        p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, time.time() - t0, ru.ru_maxrss / 1024.0


class Executor:
    """Runs a plan's stages in order; ``launcher``: the prefix for distributed stages (default one plain process)."""

    def __init__(self, plan: Plan, launcher: list[str] | None = None, progress: bool = True):
        self.plan, self.launcher, self.progress = plan, launcher or [sys.executable], progress
        self.status = load_status(plan)

    def _save(self) -> None:
        atomic_write_json(status_path(self.plan), self.status)

    def _record(self, run_id: str, stage: str, **rec) -> None:
        self.status.setdefault(run_id, {})[stage] = rec
        self._save()

    def prepare(self, only: set[str] | None = None) -> dict[str, str]:
        """Prepare every data directory the (selected) runs need; returns data dir → failure log (failed only)."""
        failed = {}
        need = {r.data_dir for r in self.plan.runs if only is None or r.id in only}
        for data_dir, recipe in self.plan.prepare.items():
            if data_dir not in need:
                continue
            lf = log_path(self.plan, None, f"prepare-{os.path.basename(data_dir)}")
            log.info("prepare %s", data_dir)
            rc, secs, _ = _spawn([sys.executable, "-m", "negint_ds.prepare", "--config", recipe, "--no-progress"], lf)
            if rc != 0:
                log.error("prepare %s failed (exit %d): %s", data_dir, rc, lf)
                failed[data_dir] = lf
        return failed

    def run(self, only: set[str] | None = None) -> int:
        """Prepare, then every stage of every (selected) run. Returns the number of runs with a failed stage."""
        from tqdm import tqdm

        def on_term(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, on_term)
        runs = [r for r in self.plan.runs if only is None or r.id in only]
        failed_data = self.prepare(only)
        todo = [(r, s) for r in runs for s in r.stages]
        bar = tqdm(total=len(todo), unit="stage", desc=self.plan.spec.name,
                   disable=not self.progress or not sys.stderr.isatty())
        n_failed = 0
        for run in runs:
            blocked = None
            if run.data_dir in failed_data:
                blocked = f"prepare failed: {failed_data[run.data_dir]}"
                self._record(run.id, "prepare", state="failed", log=failed_data[run.data_dir])
            for stage in run.stages:
                bar.update(1)
                state = stage_state(stage)
                if blocked is not None:
                    if state != "done":
                        self._record(run.id, stage.name, state="blocked", reason=blocked)
                    continue
                if state == "done":
                    rec = self.status.get(run.id, {}).get(stage.name, {})
                    if rec.get("state") != "done":
                        self._record(run.id, stage.name, state="done", log=rec.get("log"))
                    continue
                lf = log_path(self.plan, run, stage.name)
                prefix = self.launcher if stage.distributed else [sys.executable]
                argv = prefix + stage.argv(resume=state == "partial")
                log.info("%s: %s%s", run.id, stage.name, " (resuming)" if state == "partial" else "")
                try:
                    rc, secs, rss = _spawn(argv, lf)
                except KeyboardInterrupt:
                    self._record(run.id, stage.name, state="interrupted", log=lf)
                    raise
                ok = rc == 0 and stage_state(stage) == "done"
                self._record(run.id, stage.name, state="done" if ok else "failed", returncode=rc,
                             seconds=round(secs, 1), peak_rss_mib=round(rss, 1), log=lf, resumed=state == "partial")
                if not ok:
                    why = f"exit {rc}" if rc else "exit 0 but its outputs are missing"
                    log.error("%s: %s failed (%s); log: %s", run.id, stage.name, why, lf)
                    blocked = f"{stage.name} failed: {lf}"
            if blocked is not None:
                n_failed += 1
        bar.close()
        return n_failed


__all__ = ["Executor", "ExperimentError", "load_status", "log_path", "stage_state", "write_inputs"]
