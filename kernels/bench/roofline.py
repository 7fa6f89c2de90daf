"""Roofline helpers shared by the kernel benchmarks.

roofline time = max(minimum bytes / copy bandwidth, FLOPs / dense peak FLOP/s)

* minimum bytes: what the op must move (each input read once, each output written once); bandwidth is the
  device's measured copy bandwidth (bytes read + bytes written of a large device-to-device copy).
* FLOPs: the matmul work the op must do (2 per multiply-add); the peak is the dense (non-sparse) tensor-core
  rate of the device's spec sheet for the matmul dtype (:data:`DENSE_PEAK_TFLOPS`), overridable, with a
  measured large-GEMM rate (:func:`measured_matmul_peak`) to report beside it.

The memory term alone is the wrong bound for the bottleneck adapter from d ≈ 1024 in bf16: 14·N·d·b FLOPs
(with the backward's recompute) at 989 TFLOP/s take longer than its ~5·N·d·2 bytes at ~3 TB/s once
b = d/4 ≥ 256. Everything here except :func:`copy_bandwidth`, :func:`bench` and
:func:`measured_matmul_peak` is pure arithmetic (CPU-testable, ``tests/test_roofline.py``).
"""
from __future__ import annotations

import torch

MODES = ("fwd", "bwd", "full")

# Dense (no 2:4 sparsity) peak TFLOP/s from NVIDIA's spec sheets, by device and matmul precision.
# "fp32" is the non-tensor-core FMA rate (fp32 matmuls with TF32 disabled, torch's default, and Triton's
# input_precision="ieee"); "tf32" the tensor-core rate with TF32 enabled. Spec sheets quote the sparse rate
# for tensor cores: the dense rate is half of it (H100 SXM bf16: 1979 sparse → 989.4 dense).
DENSE_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 SXM": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
}


def adapter_bytes(n_tokens: int, d: int, b: int, elem_size: int, mode: str) -> int:
    """Minimum bytes the bottleneck adapter y = x + W_up·g(W_down·x + b_down) + b_up must move.

    Args:
        n_tokens: N, rows of x (all leading dims flattened).
        d: model width; b: bottleneck width.
        elem_size: bytes per element of x, the weights and every gradient (2 for bf16/fp16, 4 for fp32).
        mode: ``"fwd"``: read x (N·d), W_down, W_up (2·d·b), b_down, b_up (b + d); write y (N·d).
            ``"bwd"``: read x, dy (2·N·d), W_down, W_up (2·d·b), b_down (b, for the recomputed z; b_up does
            not enter the backward); write dx (N·d), dW_down, dW_up (2·d·b), db_down, db_up (b + d).
            ``"full"``: fwd + bwd (x is read again by the backward: a separate backward call cannot keep
            it on chip).

    Returns:
        Bytes (int).

    Raises:
        ValueError: unknown mode, or a negative size.
    """
    _check_sizes(n_tokens, d, b, mode)
    fwd = (2 * n_tokens * d + 2 * d * b + b + d) * elem_size
    bwd = (3 * n_tokens * d + 4 * d * b + 2 * b + d) * elem_size
    return {"fwd": fwd, "bwd": bwd, "full": fwd + bwd}[mode]


def adapter_flops(n_tokens: int, d: int, b: int, mode: str, recompute: bool = True) -> int:
    """Matmul FLOPs of the bottleneck adapter (2 per multiply-add; elementwise work is O(N·(d + b)), ignored).

    Counting, with each (N × d)·(d × b)-sized GEMM = 2·N·d·b:

    * ``"fwd"``: z = x·W_downᵀ (2Ndb) and h·W_upᵀ (2Ndb): **4·N·d·b**.
    * ``"bwd"`` with ``recompute`` (the forward saves no activation): recompute z = x·W_downᵀ (2Ndb),
      dh = dy·W_up (2Ndb), dx = dy + dz·W_down (2Ndb), dW_up = dyᵀ·h (2Ndb), dW_down = dzᵀ·x (2Ndb):
      **10·N·d·b**; without ``recompute`` (z or h saved): 8·N·d·b.
    * ``"full"``: fwd + bwd: **14·N·d·b** (12·N·d·b without recompute).

    Raises:
        ValueError: unknown mode, or a negative size.
    """
    _check_sizes(n_tokens, d, b, mode)
    unit = 2 * n_tokens * d * b
    fwd, bwd = 2 * unit, (5 if recompute else 4) * unit
    return {"fwd": fwd, "bwd": bwd, "full": fwd + bwd}[mode]


def _check_sizes(n_tokens: int, d: int, b: int, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if min(n_tokens, d, b) < 0:
        raise ValueError(f"sizes must be non-negative, got n_tokens={n_tokens}, d={d}, b={b}")


def roofline_seconds(n_bytes: float, flops: float, bandwidth: float, peak_flops: float) -> float:
    """max(n_bytes / bandwidth, flops / peak_flops): the time neither memory nor the tensor cores can beat.

    Args:
        n_bytes: minimum bytes moved; bandwidth: bytes/s (read + write, as :func:`copy_bandwidth`).
        flops: FLOPs; peak_flops: FLOP/s (e.g. :func:`dense_peak_flops`).

    Raises:
        ValueError: a non-positive bandwidth or peak, or negative bytes/FLOPs.
    """
    if bandwidth <= 0 or peak_flops <= 0:
        raise ValueError(f"bandwidth and peak_flops must be positive, got {bandwidth} and {peak_flops}")
    if n_bytes < 0 or flops < 0:
        raise ValueError(f"bytes and flops must be non-negative, got {n_bytes} and {flops}")
    return max(n_bytes / bandwidth, flops / peak_flops)


def roofline_bound(n_bytes: float, flops: float, bandwidth: float, peak_flops: float) -> str:
    """``"memory"`` or ``"compute"``: which term of :func:`roofline_seconds` is the larger."""
    return "compute" if flops / peak_flops > n_bytes / bandwidth else "memory"


def device_key(device_name: str) -> str | None:
    """The :data:`DENSE_PEAK_TFLOPS` key for a ``torch.cuda.get_device_name()`` string, or None if unknown.

    "NVIDIA H100 80GB HBM3" → "H100 SXM", "NVIDIA H100 PCIe" → "H100 PCIe", "NVIDIA H200" /
    "NVIDIA GH200 480GB" → "H200", "NVIDIA A100-SXM4-80GB" → "A100". H100 NVL and other parts → None
    (pass an override or use the measured peak).
    """
    n = device_name.upper()
    if "H200" in n:
        return "H200"
    if "H100" in n:
        if "PCIE" in n:
            return "H100 PCIe"
        if "NVL" in n:
            return None  # its clocks (and so its peak) differ from both SXM and PCIe
        return "H100 SXM"  # "H100 80GB HBM3", "H100 SXM5 ..."
    if "A100" in n and "PCIE" not in n:
        return "A100"
    return None


def matmul_precision(dtype: torch.dtype, allow_tf32: bool = False) -> str:
    """The :data:`DENSE_PEAK_TFLOPS` column for matmuls of ``dtype``: bf16, fp16, tf32 or fp32.

    Raises:
        ValueError: a dtype without a column.
    """
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float16:
        return "fp16"
    if dtype == torch.float32:
        return "tf32" if allow_tf32 else "fp32"
    raise ValueError(f"no dense peak for dtype {dtype}")


def dense_peak_flops(device_name: str, precision: str, override_tflops: float | None = None) -> float | None:
    """Dense peak FLOP/s of ``device_name`` for matmuls in ``precision`` (``bf16``/``fp16``/``tf32``/``fp32``).

    ``override_tflops`` (e.g. a benchmark's ``--peak-tflops``) wins when given. Returns None for a device not in
    :data:`DENSE_PEAK_TFLOPS` (no override).

    Raises:
        ValueError: unknown precision, or a non-positive override.
    """
    if precision not in ("bf16", "fp16", "tf32", "fp32"):
        raise ValueError(f"precision must be bf16, fp16, tf32 or fp32, got {precision!r}")
    if override_tflops is not None:
        if override_tflops <= 0:
            raise ValueError(f"override_tflops must be positive, got {override_tflops}")
        return override_tflops * 1e12
    key = device_key(device_name)
    return None if key is None else DENSE_PEAK_TFLOPS[key][precision] * 1e12


def copy_bandwidth(n_bytes: int = 2 << 30) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write), median of repeated copies."""
    import triton.testing

    src = torch.empty(n_bytes // 2, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() / (ms * 1e-3)


def measured_matmul_peak(dtype: torch.dtype = torch.bfloat16, n: int = 8192) -> float:
    """Achieved FLOP/s of one large square GEMM (n × n × n, cuBLAS via ``torch.mm``), median of repeats.

    What a well-shaped GEMM really reaches on this device at its sustained clock (usually below the spec-sheet
    dense peak, which assumes the boost clock); benchmarks report it beside the table value.
    """
    import triton.testing

    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(n, n, device="cuda", dtype=dtype, generator=g)
    b = torch.randn(n, n, device="cuda", dtype=dtype, generator=g)
    c = torch.empty(n, n, device="cuda", dtype=dtype)
    ms = triton.testing.do_bench(lambda: torch.mm(a, b, out=c), warmup=100, rep=500, return_mode="median")
    return 2 * n**3 / (ms * 1e-3)


def bench(fn, warmup_ms: int = 50, rep_ms: int = 300) -> tuple[float, float]:
    """(median milliseconds, peak extra GiB allocated during one call) of ``fn``."""
    import triton.testing

    fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    ms = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")
    return ms, peak
