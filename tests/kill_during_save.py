"""Run launchers/pretrain.py, SIGKILLing this process at one chosen file write of a checkpoint save.

``NEGINT_KILL=<index>:<mode>:<fraction>``: the ``index``-th write under ``checkpoints/`` (counting from 0
in this process: DeepSpeed's ``torch.save`` files, the φ optimiser state, the manifest, latest.json) is
either cut off after ``fraction`` of its bytes (``partial``: what a kill mid-write leaves on disk) or
completed (``after``), and then the process kills itself with SIGKILL, as a node failure would.
Used by tests/test_run_integrity.py.
"""
import io
import os
import runpy
import signal
import sys

import torch

import negint_ds.atomic as atomic

index, mode, fraction = os.environ["NEGINT_KILL"].split(":")
index, fraction = int(index), float(fraction)
seen = [0]


def _due(path) -> bool:
    if f"{os.sep}checkpoints{os.sep}" not in os.fspath(path):
        return False
    seen[0] += 1
    return seen[0] - 1 == index


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _cut(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * fraction)])
        f.flush()
        os.fsync(f.fileno())


real_save, real_atomic = torch.save, atomic.atomic_write_bytes


def save(obj, f, *args, **kwargs):
    if isinstance(f, (str, os.PathLike)) and _due(f):
        if mode == "partial":
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            _cut(f, buf.getvalue())
        else:
            real_save(obj, f, *args, **kwargs)
        _die()
    return real_save(obj, f, *args, **kwargs)


def atomic_write_bytes(path, data):
    if _due(path):
        if mode == "partial":  # the temporary file is half written; the rename never happens
            _cut(os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.killed.tmp"), data)
        else:
            real_atomic(path, data)
        _die()
    return real_atomic(path, data)


torch.save, atomic.atomic_write_bytes = save, atomic_write_bytes
launcher = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launchers", "pretrain.py")
sys.argv = [launcher] + sys.argv[1:]
runpy.run_path(launcher, run_name="__main__")
