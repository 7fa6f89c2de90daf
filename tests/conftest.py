"""Shared fixtures: a small synthetic two-language corpus, its prepared data, and a launcher helper."""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import yaml

import torch

# Triton kernels run on CPU under the interpreter; it must be set before any kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(REPO, "launchers", "pretrain.py")


#: The ``negint_ds`` logger as the test session found it (before any fixture of any scope ran).
_PRISTINE_LOG = (list(logging.getLogger("negint_ds").handlers), logging.getLogger("negint_ds").propagate,
                 logging.getLogger("negint_ds").level)


def _reset_project_logger() -> None:
    log = logging.getLogger("negint_ds")
    for h in log.handlers:
        if h not in _PRISTINE_LOG[0]:
            h.close()
    log.handlers[:] = _PRISTINE_LOG[0]
    log.propagate, log.level = _PRISTINE_LOG[1], _PRISTINE_LOG[2]


@pytest.fixture(autouse=True)
def _restore_project_logger():
    """Give every test the ``negint_ds`` logger as the session found it, before and after the test.

    An in-process ``Trainer`` configures that logger for a run (its own handlers, no propagation to the
    root). A module- or session-scoped fixture that trains in-process runs before this function-scoped
    fixture, so saving "the state as found" would save the trainer's; restoring the import-time snapshot
    keeps later tests' records visible to pytest's ``caplog`` whatever the test order.
    """
    _reset_project_logger()
    yield
    _reset_project_logger()


def synthetic_lines(seed: int, syllables: list[str], n_lines: int, n_words: int = 300) -> list[str]:
    """Zipf-distributed pseudo-words built from a language-specific syllable set (learnable by an MLM)."""
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(n_words)]
    p = 1.0 / np.arange(1, n_words + 1)
    p /= p.sum()
    lines = []
    for _ in range(n_lines):
        k = int(rng.integers(4, 16))
        lines.append(" ".join(words[i] for i in rng.choice(n_words, size=k, p=p)).capitalize() + ".")
    return lines


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("corpus")
    langs = {"en": ["ka", "to", "ri", "ne", "so", "lu", "mi"], "sw": ["mba", "ngu", "wa", "zi", "cha", "li", "ki"]}
    for i, (lang, syl) in enumerate(langs.items()):
        (d / f"{lang}.txt").write_text("\n".join(synthetic_lines(i, syl, 1500)) + "\n", encoding="utf-8")
    return str(d)


def recipe(corpus_dir: str, data_dir: str, **sections) -> dict:
    """A tiny recipe mapping over the synthetic corpus; ``sections`` update the top-level sections."""
    r = {
        "name": "tiny",
        "data": {"dir": data_dir,
                 "languages": {"en": {"source": "text", "path": os.path.join(corpus_dir, "en.txt")},
                               "sw": {"source": "text", "path": os.path.join(corpus_dir, "sw.txt")}},
                 "split": {"valid_fraction": 0.05, "test_fraction": 0.05},
                 "vocab": {"size": 300, "sample_sentences": 10000}},
        "model": {"layers": 2, "dim": 32, "heads": 2, "ffn_dim": 64, "max_positions": 32},
        "train": {"max_steps": 20, "seq_len": 32, "warmup_steps": 5, "log_every": 1, "eval_every": 5,
                  "save_every": 10, "eval_sequences": 16, "eval_batch_size": 8},
    }
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(r.get(k), dict):
            r[k].update(v)
        else:
            r[k] = v
    return r


def write_recipe(path: str, mapping: dict) -> str:
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(mapping, f)
    return path


@pytest.fixture(scope="session")
def tiny_data(corpus_dir, tmp_path_factory) -> dict:
    """Prepared data for the tiny recipe: {'recipe': path, 'data_dir': path, 'manifest': dict}."""
    from negint_ds.config import load_experiment
    from negint_ds.data.prepare import prepare_data

    d = tmp_path_factory.mktemp("tiny_data")
    rpath = write_recipe(str(d / "tiny.yaml"), recipe(corpus_dir, str(d / "data")))
    cfg = load_experiment(rpath)
    manifest = prepare_data(cfg.data, progress=False)
    return {"recipe": rpath, "data_dir": cfg.data.dir, "manifest": manifest, "dir": str(d)}


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> dict:
    """A finished tiny run for the analyses: 12 ZeRO-2 steps (warm-up 4), checkpoints at steps 6 and 12, export/
    written. {'run': run dir, 'ds': its DeepSpeed config, 'dir': a scratch directory beside it}. Tests may add
    files under its analysis/, never change what training wrote."""
    d = tmp_path_factory.mktemp("tiny_run")
    ds = write_ds_config(str(d / "zero2.json"), stage=2)
    run = str(d / "run")
    p = run_launcher(["--deepspeed_config", ds, "--config", tiny_data["recipe"], "--run_dir", run,
                      "--set", "train.max_steps=12", "--set", "train.save_every=6", "--set", "train.eval_every=6",
                      "--set", "train.warmup_steps=4", "--set", "train.keep_checkpoints=2"])
    assert p.returncode == 0, p.stderr[-3000:]
    return {"run": run, "ds": ds, "dir": str(d)}


def write_ds_config(path: str, stage: int = 2, micro: int = 4, accum: int = 1, lr: float = 1e-3, **extra) -> str:
    cfg = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": accum,
           "optimizer": {"type": "AdamW", "params": {"lr": lr, "eps": 1e-6, "weight_decay": 0.01,
                                                     "torch_adam": True}},
           "gradient_clipping": 5.0, "zero_optimization": {"stage": stage}}
    cfg.update(extra)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f)
    return path


def free_port() -> int:
    """A TCP port free right now on every interface (the rendezvous server binds them all)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


#: Set in this process by the in-process trainers' gloo group (fixture ``process_group``); a child process that
#: inherited them would skip DeepSpeed's MPI discovery and every mpiexec rank would act as rank 0 of 1.
_GROUP_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def find_tool(name: str) -> str | None:
    """A console script (``mpiexec``, ``deepspeed``) next to this interpreter, else on PATH; None if neither."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.isfile(path) else shutil.which(name)


def child_env(**extra: str) -> dict:
    """The environment for a launched child process: this one's without its process-group variables."""
    env = {k: v for k, v in os.environ.items() if k not in _GROUP_ENV}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def run_launcher(args: list[str], prefix: list[str] | None = None, timeout: int = 600,
                 env: dict | None = None) -> subprocess.CompletedProcess:
    """Run launchers/pretrain.py under ``prefix`` (e.g. ``["deepspeed", "--num_gpus", "2", "--master_port",
    "{port}"]``; ``{port}`` becomes this launch's rendezvous port), else plain python."""
    for attempt in range(3):
        port = str(free_port())
        cmd = [port if a == "{port}" else a for a in (prefix or [sys.executable])] + [LAUNCHER, "--no_progress"] + args
        e = child_env(MASTER_PORT=port, **(env or {}))
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=e)
        # Another process can take the free port between our probe and the rendezvous bind: only then, retry.
        if p.returncode == 0 or "EADDRINUSE" not in p.stderr + p.stdout:
            return p
    return p


def run_launchers(jobs: list[list[str]], prefix: list[str] | None = None, timeout: int = 600,
                  workers: int = 2) -> list[subprocess.CompletedProcess]:
    """:func:`run_launcher` for independent runs, ``workers`` at a time (results in ``jobs`` order).

    A launch is mostly single-threaded start-up (imports, DeepSpeed set-up), so two at a time roughly halve
    the wall time on the 2-core CI machine. Every child gets the same environment (thread counts included), so
    runs compared for bit-identity compute the same way whether or not they overlapped.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda args: run_launcher(args, prefix=prefix, timeout=timeout), jobs))


def read_metrics(run_dir: str, kind: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def load_export(run_dir: str) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(run_dir, "export", "model.safetensors"))


@pytest.fixture(scope="session")
def process_group():
    """One 1-process gloo group for every in-process DeepSpeed trainer of the session (DeepSpeed caches the
    first group it sees, so modules must not each create and destroy their own); torn down, and the
    environment restored, at the end."""
    import deepspeed
    import torch.distributed as dist

    from negint_ds.train.dist import shutdown_distributed

    if dist.is_initialized():
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                         MASTER_PORT=str(free_port())).items():
            mp.setenv(k, v)
        deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
        yield
        shutdown_distributed()


@pytest.fixture
def cli(process_group, capsys, monkeypatch):
    """Run a command line's ``main(argv)`` in this process: ``call(main, argv) -> (exit code, stdout, stderr)``.

    For the bad-input cases: the refusal runs the same code as a launch (parsing, checks, the named error, the
    exit code ``main`` hands to ``sys.exit``) without a child's ~4 s of imports (torch, DeepSpeed). The session's
    1-process group stands in for ``init_distributed``'s and must outlive the call, so the CLIs' shutdown is a
    no-op here. Each launcher keeps at least one refusal through a real child process (exit status, no traceback).
    """
    import negint_ds.train.dist as dist_helpers

    monkeypatch.setattr(dist_helpers, "shutdown_distributed", lambda: None)

    def call(main, argv: list[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse's usage errors
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return call
