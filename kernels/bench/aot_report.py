"""Ahead-of-time report: every adapter and FD-HVP kernel configuration the dispatcher can launch, compiled for
sm_90a on this machine (no GPU needed), with registers, spills, shared memory and the matrix instruction kind.

    python kernels/bench/aot_report.py [--dtypes bf16,fp32] [--json out.json]

Exits 1 if a configuration contradicts the design (a spill where none is promised, more shared memory than
recorded in kernels/adapter_configs.py or than an H100 allows, or not wgmma where wgmma is expected).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU target, not the interpreter
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from negint_ds.kernels import adapter_configs  # noqa: E402
from negint_ds.kernels.bench.aot import compile_sm90, cuda_backend_available  # noqa: E402


def adapter_rows(dtypes) -> list[dict]:
    """Compile every adapter variant; one dict per variant with the figures and the design problems found."""
    rows = []
    for v, tiles, spill_free in adapter_configs.aot_variants(dtypes):
        r = compile_sm90(v)
        problems = [p for p in r.problems() if spill_free or not p.startswith("spills")]
        if r.shared_bytes > tiles.smem:
            problems.append(f"shared memory {r.shared_bytes} B > recorded {tiles.smem} B")
        rows.append({"variant": v.name, "registers": r.registers, "spill_bytes": r.spills,
                     "shared_bytes": r.shared_bytes, "recorded_smem": tiles.smem, "mma": r.mma_kind,
                     "spill_free_by_design": spill_free, "vector_loads": r.vector_loads, "problems": problems})
    return rows


def fd_rows() -> list[dict]:
    from negint_ds.kernels import fd_hvp_triton

    rows = []
    for v in fd_hvp_triton.aot_variants():
        r = compile_sm90(v)
        rows.append({"variant": v.name, "registers": r.registers, "spill_bytes": r.spills,
                     "shared_bytes": r.shared_bytes, "recorded_smem": None, "mma": r.mma_kind,
                     "spill_free_by_design": True, "vector_loads": r.vector_loads, "problems": r.problems()})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--json", default=None, help="also write the rows here")
    a = p.parse_args(argv)
    why = cuda_backend_available()
    if why:
        print(f"cannot compile for sm_90a here: {why}", file=sys.stderr)
        return 2
    rows = adapter_rows(a.dtypes.split(",")) + fd_rows()
    print("| variant | registers | spills (B) | shared memory (B) | MMA | 16-B loads | problems |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['registers']} | {r['spill_bytes']} | {r['shared_bytes']} | {r['mma']} | "
              f"{r['vector_loads']} | {'; '.join(r['problems']) or '—'} |")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 1 if any(r["problems"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
