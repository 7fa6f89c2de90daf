"""Multi-tensor finite-difference HVP ops vs torch foreach ops (GPU), as ratios to the roofline.

    python kernels/bench/bench_fd_hvp.py [--params 41.6e6]

θ is split into the paper model's tensor shapes (8 layers × d=512, FFN 2048, vocab 32k) scaled to
``--params`` fp32 parameters. Minimum bytes: perturb reads θ and v and writes θ±: 3·4·N; global_norm
reads v: 4·N; combine reads direct, g⁺, g⁻ and writes the result: 4·4·N_φ (here measured on θ's sizes).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from negint_ds.kernels import fd_hvp_reference as R  # noqa: E402
from negint_ds.kernels import fd_hvp_triton as K  # noqa: E402
from negint_ds.kernels.bench.roofline import bench, copy_bandwidth  # noqa: E402


def paper_shapes(total: float) -> list[tuple[int, ...]]:
    d, f, V, L = 512, 2048, 32000, 8
    layer = [(3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (f, d), (f,), (d, f), (d,), (d,), (d,)]
    shapes = [(V, d), (256, d), (2, d), (d,), (d,)] + layer * L + [(V,)]
    n = sum(torch.Size(s).numel() for s in shapes)
    scale = max(1, round(total / n))
    return shapes * scale


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=float, default=41.6e6)
    a = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_fd_hvp.py measures GPU kernels: no CUDA device")
    bw = copy_bandwidth()
    shapes = paper_shapes(a.params)
    th = [torch.randn(s, device="cuda") for s in shapes]
    v = [torch.randn(s, device="cuda") for s in shapes]
    out = [torch.empty_like(t) for t in th]
    n = sum(t.numel() for t in th)
    eps = torch.tensor(1e-3, device="cuda")
    print(json.dumps({"device": torch.cuda.get_device_name(), "copy_bandwidth_TBps": bw / 1e12, "params": n,
                      "tensors": len(th)}))
    cases = {
        "perturb": (12 * n, {"triton": lambda: K.perturb(th, v, eps, out=out),
                             "foreach": lambda: (torch._foreach_copy_(out, th), torch._foreach_add_(out, v, alpha=1e-3)),
                             "foreach_fresh": lambda: torch._foreach_add(th, v, alpha=1e-3),
                             "reference": lambda: R.perturb(th, v, eps)}),
        "global_norm": (4 * n, {"triton": lambda: K.global_norm(v),
                                "foreach": lambda: torch.linalg.vector_norm(torch.stack(torch._foreach_norm(v))),
                                "reference": lambda: R.global_norm(v)}),
        "combine": (16 * n, {"triton": lambda: K.combine(th, v, out, 0.01, eps),
                             "reference": lambda: R.combine(th, v, out, 0.01, eps)}),
    }
    print("\n| op | provider | ms | × roofline | peak extra GiB |\n|---|---|---|---|---|")
    for op, (nbytes, provs) in cases.items():
        roof_ms = nbytes / bw * 1e3
        for name, fn in provs.items():
            ms, peak = bench(fn)
            print(f"| {op} | {name} | {ms:.3f} | {ms / roof_ms:.2f} | {peak:.2f} |", flush=True)


if __name__ == "__main__":
    main()
