"""Tile configurations the fused adapter may launch, per (storage precision, padded bottleneck).

One table per kernel (forward, backward row kernel, backward weight kernel). Each entry lists candidates
for ``@triton.autotune`` on a GPU (keyed on d, b and dtype); the first candidate is the default (used under
the CPU interpreter and where autotuning is off). Every candidate here was compiled ahead of time for sm_90a
(``kernels/bench/aot_report.py``) with no register spills, and its static shared memory is recorded in
``smem`` (bytes); ``tests/test_aot_report.py`` recompiles them all and fails if a spill appears or a recorded
figure is below the compiled one, so :func:`fits` — the eligibility rule the dispatcher uses — cannot
promise a configuration that does not launch.

Bottleneck classes are powers of two from 16 to 512 (``BLOCK_B``); 16-bit storage (fp16/bf16) uses tensor
cores (wgmma needs 64-row tiles per warpgroup, so ``block_m`` is 64 per 4 warps); fp32 uses IEEE fp32 dots
(FMA), where smaller tiles keep the fp32 operands in registers.
"""
from __future__ import annotations

import dataclasses

import torch

MAX_BOTTLENECK = 512
H100_SMEM_PER_BLOCK = 232_448


@dataclasses.dataclass(frozen=True)
class Tiles:
    """One launch configuration. ``block_m``: rows (tokens) per tile; ``block_k``/``block_n``: d-slices of
    the down-projection's reduction and of the output columns (weight kernel: ``block_m`` tokens per step,
    ``block_k`` the b-slice and ``block_n`` the d-slice of a program's dW tile);
    ``smem``: static shared memory of the compiled sm_90a kernel in bytes (see module docstring)."""

    block_m: int
    block_k: int
    block_n: int
    num_warps: int
    num_stages: int
    smem: int


def block_b(b: int) -> int:
    """The padded bottleneck: the next power of two ≥ b, at least 16 (the smallest tensor-core tile side)."""
    return max(16, 1 << (max(1, b) - 1).bit_length())


def precision_class(dtype: torch.dtype) -> str:
    """``"16"`` for fp16/bf16 storage, ``"32"`` for fp32."""
    return "32" if dtype == torch.float32 else "16"


T = Tiles
# (precision class, BLOCK_B) → candidates, first = default; smem = the compiled sm_90a figure in bytes
# (kernels/bench/aot_report.py; tests/test_aot_report.py recompiles and compares)
# fp32 (IEEE dots, the correctness path): the forward and the backward row kernel compile to the same figures
_FP32_ROW_TILES = {("32", bb): [T(32, 32, 32, 4, 1, smem)] for bb, smem in
                   ((16, 6144), (32, 8192), (64, 16384), (128, 32768), (256, 65536), (512, 131072))}
FORWARD: dict[tuple[str, int], list[Tiles]] = {
    ('16', 16): [T(128, 64, 64, 8, 2, 36864), T(64, 64, 64, 8, 2, 20480)],
    ('16', 32): [T(128, 64, 64, 8, 2, 40960), T(64, 64, 64, 8, 2, 24576)],
    ('16', 64): [T(128, 64, 64, 8, 2, 49152), T(64, 64, 64, 8, 2, 32768)],
    ('16', 128): [T(128, 64, 64, 8, 2, 65536), T(64, 64, 64, 8, 2, 49152)],
    ('16', 256): [T(64, 64, 64, 8, 2, 81920)],
    ('16', 512): [T(64, 32, 32, 8, 2, 102400)],
    **_FP32_ROW_TILES,
}
BACKWARD_ROWS: dict[tuple[str, int], list[Tiles]] = {
    ('16', 16): [T(128, 64, 64, 8, 2, 36864)],
    ('16', 32): [T(128, 64, 64, 8, 2, 40960)],
    ('16', 64): [T(64, 64, 64, 8, 2, 32768), T(64, 64, 64, 8, 1, 24576)],
    ('16', 128): [T(64, 64, 64, 8, 2, 57344), T(64, 64, 64, 8, 1, 40960)],
    ('16', 256): [T(64, 64, 64, 8, 1, 73728)],
    ('16', 512): [T(64, 32, 32, 8, 1, 102400)],
    **_FP32_ROW_TILES,
}
# weight kernel: block_m = tokens per step, block_k = b-slice, block_n = d-slice
BACKWARD_WEIGHTS: dict[tuple[str, int], list[Tiles]] = {
    ('16', 16): [T(64, 64, 128, 8, 2, 34816)],
    ('16', 32): [T(64, 64, 128, 8, 2, 36864)],
    ('16', 64): [T(64, 64, 128, 8, 2, 40960)],
    ('16', 128): [T(64, 128, 128, 8, 2, 65536)],
    ('16', 256): [T(64, 128, 128, 8, 2, 65536)],
    ('16', 512): [T(64, 128, 128, 8, 2, 65536)],
    ('32', 16): [T(32, 32, 32, 4, 1, 6144)],
    ('32', 32): [T(32, 32, 32, 4, 1, 8192)],
    ('32', 64): [T(32, 32, 32, 4, 1, 8192)],
    ('32', 128): [T(32, 32, 32, 4, 1, 8192)],
    ('32', 256): [T(32, 32, 32, 4, 1, 8192)],
    ('32', 512): [T(32, 32, 32, 4, 1, 8192)],
}


def _lookup(table: dict, what: str, dtype: torch.dtype, b: int) -> list[Tiles]:
    key = (precision_class(dtype), block_b(b))
    if key not in table:
        raise ValueError(f"no {what} tile configuration for dtype {dtype} and bottleneck {b} (BLOCK_B {key[1]})")
    return table[key]


def forward_candidates(dtype: torch.dtype, b: int) -> list[Tiles]:
    """Autotuning candidates of the forward kernel for this dtype and bottleneck (first = default)."""
    return _lookup(FORWARD, "forward", dtype, b)


def backward_rows_candidates(dtype: torch.dtype, b: int) -> list[Tiles]:
    return _lookup(BACKWARD_ROWS, "backward row", dtype, b)


def backward_weights_candidates(dtype: torch.dtype, b: int) -> list[Tiles]:
    return _lookup(BACKWARD_WEIGHTS, "backward weight", dtype, b)


def fits(dtype: torch.dtype, b: int, smem_limit: int | None) -> str | None:
    """None if every kernel has a configuration for (dtype, b) within ``smem_limit`` bytes, else why not.

    ``smem_limit`` None (CPU interpreter) checks only that configurations exist.
    """
    key = (precision_class(dtype), block_b(b))
    for name, table in (("forward", FORWARD), ("backward row", BACKWARD_ROWS), ("backward weight", BACKWARD_WEIGHTS)):
        cands = table.get(key)
        if not cands:
            return f"fused adapter has no {name} tile configuration for {dtype} with bottleneck {b}"
        if smem_limit is not None and min(c.smem for c in cands) > smem_limit:
            return (f"fused adapter's {name} kernel needs {min(c.smem for c in cands)} B of shared memory for "
                    f"{dtype} with bottleneck {b}; this GPU allows {smem_limit} B per block")
    return None


def aot_variants(dtypes=("bf16", "fp32")) -> list:
    """Every (kernel, dtype, BLOCK_B, candidate) the dispatcher can launch, as ahead-of-time compile variants.

    Returns (Variant, Tiles, spill-free by design) triples. ``expect_mma``: 16-bit storage must compile to wgmma
    (``HGMMA``); fp32 uses IEEE fp32 dots (FMA, no matrix instructions expected). In 16-bit storage the design
    keeps every kernel spill-free up to BLOCK_B 128 (d ≤ 512 at b = d/4), the forward up to 256 and the weight
    kernel (b-sliced) at every b; the backward row kernel holds z, g'(z) and dh for all b at once and spills beyond that (recorded in
    benchmarks/RESULTS.md; see :func:`spill_free_by_design`).
    """
    from . import adapter_triton as A
    from .bench.aot import Variant

    out = []
    for dt in dtypes:
        prec_class = "32" if dt == "fp32" else "16"
        ptr = f"*{dt}"
        for (kernel, table) in (("fwd", FORWARD), ("rows", BACKWARD_ROWS), ("weights", BACKWARD_WEIGHTS)):
            for (pc, bb), cands in sorted(table.items()):
                if pc != prec_class:
                    continue
                for i, c in enumerate(cands):
                    prec = "ieee" if dt == "fp32" else "tf32"
                    if kernel == "fwd":
                        fn = A._adapter_fwd_kernel
                        const = dict(ACT=0, PREC=prec, BLOCK_M=c.block_m, BLOCK_K=c.block_k, BLOCK_B=bb,
                                     BLOCK_N=c.block_n)
                    elif kernel == "rows":
                        fn = A._adapter_bwd_rows_kernel
                        const = dict(ACT=0, PREC=prec, BLOCK_M=c.block_m, BLOCK_K=c.block_k, BLOCK_B=bb,
                                     BLOCK_N=c.block_n, WRITE_DX=True, WRITE_H=True, WRITE_DZ=True)
                    else:
                        fn = A._adapter_bwd_weights_kernel
                        const = dict(PREC=prec, BLOCK_T=c.block_m, BLOCK_D=c.block_n, BLOCK_BS=min(c.block_k, bb),
                                     DO_UP=True, DO_DOWN=True)
                    sig = {n: (ptr if n.endswith("_ptr") else "*fp32" if n.endswith("_part") else "i32")
                           for n in fn.arg_names if n not in const}
                    aligned = tuple(n for n, t in sig.items() if t.startswith("*")) + tuple(
                        n for n in ("D", "sx_m", "sy_m", "sdy_m") if n in sig)
                    v = Variant(f"{kernel} {dt} BLOCK_B={bb} #{i} (m{c.block_m} k{c.block_k} n{c.block_n} "
                                f"w{c.num_warps} s{c.num_stages})", fn, sig, const, c.num_warps, c.num_stages, aligned,
                                expect_mma=None if dt == "fp32" else "HGMMA")
                    out.append((v, c, spill_free_by_design(kernel, dt, bb)))
    return out


def spill_free_by_design(kernel: str, dtype: str, bb: int) -> bool:
    """Whether the design promises no register spills for this kernel, dtype and BLOCK_B (see :func:`aot_variants`).

    fp32 is the correctness path (CPU interpreter, fp32 debugging); its IEEE dots hold fp32 operands in
    registers, so only small bottlenecks are spill-free there.
    """
    if dtype == "fp32":
        return bb <= 64 or kernel == "weights" or (kernel == "fwd" and bb <= 256)
    return bb <= 128 or kernel == "weights" or (kernel == "fwd" and bb <= 256)
