"""Memory-bandwidth roofline helpers shared by the kernel benchmarks.

roofline time = minimum bytes the op must move (each input read once, each output written once) divided
by the device's measured copy bandwidth (bytes read + bytes written of a large device-to-device copy).
"""
from __future__ import annotations

import torch


def copy_bandwidth(n_bytes: int = 2 << 30) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write), median of repeated copies."""
    import triton.testing

    src = torch.empty(n_bytes // 2, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() / (ms * 1e-3)


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
