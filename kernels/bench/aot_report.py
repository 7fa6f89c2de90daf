"""Ahead-of-time report: every adapter and FD-HVP kernel configuration the dispatcher can launch, compiled for
sm_90a on this machine (no GPU needed), with registers, spills, shared memory and the matrix instruction kind.

    python kernels/bench/aot_report.py [--dtypes bf16,fp32] [--json out.json] [--jobs N]

Exits 1 if a configuration contradicts the design (a spill where none is promised, more shared memory than
recorded in kernels/adapter_configs.py or than an H100 allows, or not wgmma where wgmma is expected).
"""
from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU target, not the interpreter
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from negint_ds.kernels import adapter_configs  # noqa: E402
from negint_ds.kernels.bench.aot import compile_sm90, cuda_backend_available  # noqa: E402


def _variants(kind: str, dtypes: tuple[str, ...]) -> list:
    """The variants of ``kind`` (``adapter``: (variant, tiles, spill_free) triples; ``fd``: variants), in order."""
    if kind == "adapter":
        return list(adapter_configs.aot_variants(dtypes))
    from negint_ds.kernels import fd_hvp_triton

    return [(v, None, True) for v in fd_hvp_triton.aot_variants()]


def _row(kind: str, dtypes: tuple[str, ...], i: int) -> dict:
    """Compile variant ``i`` of ``kind``: its figures and the design problems found (runs in a worker process,
    which rebuilds the variant list: compiled kernels and variants need not be picklable)."""
    v, tiles, spill_free = _variants(kind, dtypes)[i]
    r = compile_sm90(v)
    problems = [p for p in r.problems() if spill_free or not p.startswith("spills")]
    if tiles is not None and r.shared_bytes > tiles.smem:
        problems.append(f"shared memory {r.shared_bytes} B > recorded {tiles.smem} B")
    return {"variant": v.name, "registers": r.registers, "spill_bytes": r.spills, "shared_bytes": r.shared_bytes,
            "recorded_smem": None if tiles is None else tiles.smem, "mma": r.mma_kind,
            "spill_free_by_design": spill_free, "vector_loads": r.vector_loads, "problems": problems}


def rows(dtypes, jobs: int = 1) -> list[dict]:
    """Every adapter variant for ``dtypes``, then every FD-HVP variant, compiled by ``jobs`` processes
    (ptxas is single-threaded, so the report scales with cores); rows in variant order whatever ``jobs``."""
    dtypes = tuple(dtypes)
    work = [(k, dtypes, i) for k in ("adapter", "fd") for i in range(len(_variants(k, dtypes)))]
    if jobs <= 1:
        return [_row(*w) for w in work]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(_row, *zip(*work)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiling processes (default: all cores)")
    a = p.parse_args(argv)
    why = cuda_backend_available()
    if why:
        print(f"cannot compile for sm_90a here: {why}", file=sys.stderr)
        return 2
    table = rows(a.dtypes.split(","), a.jobs)
    print("| variant | registers | spills (B) | shared memory (B) | MMA | 16-B loads | problems |")
    print("|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['variant']} | {r['registers']} | {r['spill_bytes']} | {r['shared_bytes']} | {r['mma']} | "
              f"{r['vector_loads']} | {'; '.join(r['problems']) or '—'} |")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(table, f, indent=1)
    return 1 if any(r["problems"] for r in table) else 0


if __name__ == "__main__":
    sys.exit(main())
