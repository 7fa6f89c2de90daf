"""Fused bottleneck adapter vs torch eager vs torch.compile: forward, backward, forward+backward (GPU).

    python kernels/bench/bench_adapter.py [--dtype bf16] [--tokens 32768]

For each shape (tokens, d, b) and provider it prints the median time, the peak extra memory, and the ratio
to the memory-bandwidth roofline (kernels/bench/roofline.py). Minimum bytes (e = element size):
forward reads x and the weights and writes y: (2·T·d + 2·d·b + b + d)·e; backward reads x, dy and the
weights and writes dx and the weight/bias gradients: (3·T·d + 4·d·b + 2·(b + d))·e; full is their sum.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from negint_ds.kernels.adapter_reference import bottleneck_adapter_reference  # noqa: E402
from negint_ds.kernels.adapter_triton import bottleneck_adapter_triton  # noqa: E402
from negint_ds.kernels.bench.roofline import bench, copy_bandwidth  # noqa: E402

SHAPES = [(32768, 512, 128), (32768, 768, 192), (32768, 1024, 256), (65536, 2048, 512)]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def min_bytes(T: int, d: int, b: int, e: int, mode: str) -> int:
    fwd = (2 * T * d + 2 * d * b + b + d) * e
    bwd = (3 * T * d + 4 * d * b + 2 * (b + d)) * e
    return {"fwd": fwd, "bwd": bwd, "full": fwd + bwd}[mode]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="bf16", choices=DTYPES)
    p.add_argument("--tokens", type=int, default=None, help="override the token count of every shape")
    p.add_argument("--providers", default="triton,eager,compile")
    a = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_adapter.py measures GPU kernels: no CUDA device")
    dt = DTYPES[a.dtype]
    bw = copy_bandwidth()
    print(json.dumps({"device": torch.cuda.get_device_name(), "copy_bandwidth_TBps": bw / 1e12, "dtype": a.dtype}))
    fns = {"triton": bottleneck_adapter_triton, "eager": bottleneck_adapter_reference,
           "compile": torch.compile(bottleneck_adapter_reference)}
    rows = []
    for T, d, b in SHAPES:
        T = a.tokens or T
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(T, d, device="cuda", dtype=dt, generator=g)
        w = [torch.randn(b, d, device="cuda", dtype=dt, generator=g) * d ** -0.5,
             torch.randn(b, device="cuda", dtype=dt, generator=g) * 0.1,
             torch.randn(d, b, device="cuda", dtype=dt, generator=g) * b ** -0.5,
             torch.randn(d, device="cuda", dtype=dt, generator=g) * 0.1]
        dy = torch.randn_like(x)
        for name in a.providers.split(","):
            fn = fns[name]
            leaves = [x.clone().requires_grad_(True)] + [t.clone().requires_grad_(True) for t in w]
            y = fn(*leaves)

            def fwd():
                with torch.no_grad():
                    fn(*leaves)

            def bwd():
                torch.autograd.grad(y, leaves, dy, retain_graph=True)

            def full():
                torch.autograd.grad(fn(*leaves), leaves, dy)

            for mode, f in (("fwd", fwd), ("bwd", bwd), ("full", full)):
                ms, peak = bench(f)
                roof_ms = min_bytes(T, d, b, x.element_size(), mode) / bw * 1e3
                r = {"T": T, "d": d, "b": b, "provider": name, "mode": mode, "ms": ms, "peak_gib": peak,
                     "x_roofline": ms / roof_ms}
                rows.append(r)
                print(json.dumps(r), flush=True)
    print("\n| tokens | d | b | provider | fwd ms (× roofline) | bwd ms (×) | fwd+bwd ms (×) |\n|---|---|---|---|---|---|---|")
    key = lambda r: (r["T"], r["d"], r["b"], r["provider"])  # noqa: E731
    for k in dict.fromkeys(key(r) for r in rows):
        cells = {r["mode"]: f"{r['ms'] * 1e3:.0f} µs ({r['x_roofline']:.2f}×)" for r in rows if key(r) == k}
        print(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {cells['fwd']} | {cells['bwd']} | {cells['full']} |")


if __name__ == "__main__":
    main()
