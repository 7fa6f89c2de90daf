"""Multi-tensor finite-difference HVP ops (paper Eq. 8): Triton vs the torch reference vs foreach, on a GPU.

    python kernels/bench/bench_fd_hvp.py [--params 4e6,41.6e6] [--configs fp32,bf16] [--json out.json]

θ is split into the paper model's tensor shapes (8 layers × d=512, FFN 2048, vocab 32k) repeated to reach
each ``--params`` count. Configurations (storage dtypes):

* ``fp32``: θ, v, gradients fp32;
* ``bf16``: θ bf16 with an fp32 direction v (the meta step's mixed case), gradients bf16.

Minimum bytes (each input read once, each output written once; e = bytes per element):
perturb N·(2·e_θ + e_v), global_norm N·e_v, combine N·(3·e_g + 4) (fp32 out). The roofline time is that over
the device's measured copy bandwidth (:func:`kernels.bench.roofline.copy_bandwidth`).

Providers: ``triton`` (tables cached, the steady state of a training run), ``triton_cold`` (table cache
cleared before every call: one pinned, non-blocking table upload per dtype group), ``reference``
(:mod:`negint_ds.kernels.fd_hvp_reference`) and, where the lists have one dtype, torch ``foreach`` ops.
ε is a 0-d device tensor, as a driver that keeps ε = c/‖v‖ on the device would pass it.

Correctness at every size and configuration, before timing: perturb within 1 ulp of the reference at
max(|θ|, |α v|) (the fma bound, ``kernels/ulp.py``), global_norm and combine within 1e-5 relative error.
Host synchronisations per call are counted with ``torch.cuda.set_sync_debug_mode("warn")`` (0 expected
for ``triton``, cached or cold). A failed check is recorded and makes the script exit 1 after the run.

Output: a markdown table on stdout and, with ``--json PATH``, every row plus device, bandwidth and versions
(rewritten after each size, so a run cut short keeps what it measured).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import warnings

import torch

if not __package__:  # run as a script: import negint_ds from this checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from negint_ds.atomic import json_safe  # noqa: E402
from negint_ds.kernels import fd_hvp_reference as R  # noqa: E402
from negint_ds.kernels.bench.roofline import bench, copy_bandwidth  # noqa: E402
from negint_ds.kernels.ulp import max_ulp_distance  # noqa: E402

CONFIGS = {"fp32": (torch.float32, torch.float32, torch.float32),  # (θ, v, gradients)
           "bf16": (torch.bfloat16, torch.float32, torch.bfloat16)}
REL_TOL = 1e-5
DEVICE = "cuda"
ALPHA, BETA = 1e-3, 0.01


def paper_shapes(total: float) -> list[tuple[int, ...]]:
    d, f, V, L = 512, 2048, 32000, 8
    layer = [(3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (f, d), (f,), (d, f), (d,), (d,), (d,)]
    shapes = [(V, d), (256, d), (2, d), (d,), (d,)] + layer * L + [(V,)]
    n = sum(torch.Size(s).numel() for s in shapes)
    return shapes * max(1, round(total / n))


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def host_syncs(fn) -> int:
    """Synchronising CUDA calls made by one ``fn()`` (torch's sync debug mode, as warnings)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message) for w in caught)


def checks(K, th, v, g, eps) -> list[dict]:
    """Correctness of the Triton ops against the reference on the benchmark's own inputs."""
    rows = []
    got, ref = K.perturb(th, v, eps), R.perturb(th, v, eps)
    a = float(eps)  # outside any timing
    ulps = max(max_ulp_distance(x, y, torch.maximum(t.double().abs(), (a * d.double()).abs()))
               for x, y, t, d in zip(got, ref, th, v))
    rows.append({"op": "perturb", "metric": "max ulp at max(|θ|,|αv|)", "value": ulps, "ok": ulps <= 1})
    del got, ref
    e = rel(K.global_norm(v), R.global_norm(v))
    rows.append({"op": "global_norm", "metric": "relative error", "value": e, "ok": e <= REL_TOL})
    got, ref = K.combine(g[0], g[1], g[2], BETA, eps), R.combine(g[0], g[1], g[2], BETA, eps)
    e = max(rel(x, y) for x, y in zip(got, ref))
    rows.append({"op": "combine", "metric": "max relative error", "value": e, "ok": e <= REL_TOL})
    return rows


def measure(K, total: float, cfg: str, bw: float, rep_ms: int) -> tuple[list[dict], list[dict]]:
    """(timing rows, check rows) of every op and provider for one size and configuration."""
    dt_t, dt_v, dt_g = CONFIGS[cfg]
    shapes = paper_shapes(total)
    gen = torch.Generator(device=DEVICE).manual_seed(0)

    def mk(s, dt):
        return torch.randn(s, device=DEVICE, generator=gen).to(dt)

    th = [mk(s, dt_t) for s in shapes]
    v = [mk(s, dt_v) for s in shapes]
    g = [[mk(s, dt_g) for s in shapes] for _ in range(3)]
    out = [torch.empty_like(t) for t in th]
    n = sum(t.numel() for t in th)
    eps = torch.tensor(ALPHA, device=DEVICE)
    e_t, e_v, e_g = (torch.empty((), dtype=d).element_size() for d in (dt_t, dt_v, dt_g))
    found = [dict(row, params=n, config=cfg) for row in checks(K, th, v, g, eps)]

    def cold(fn):  # every call builds and uploads its tables
        return lambda: (K.clear_cache(), fn())

    def foreach_perturb():
        torch._foreach_copy_(out, th)
        torch._foreach_add_(out, v, alpha=ALPHA)

    cases = {
        "perturb": (n * (2 * e_t + e_v), {
            "triton": lambda: K.perturb(th, v, eps, out=out),
            "triton_cold": cold(lambda: K.perturb(th, v, eps, out=out)),
            "reference": lambda: R.perturb(th, v, eps, out=out),
            **({"foreach": foreach_perturb} if dt_t == dt_v else {})}),
        "global_norm": (n * e_v, {
            "triton": lambda: K.global_norm(v),
            "triton_cold": cold(lambda: K.global_norm(v)),
            "reference": lambda: R.global_norm(v),
            "foreach": lambda: torch.linalg.vector_norm(torch.stack(torch._foreach_norm(v)))}),
        "combine": (n * (3 * e_g + 4), {
            "triton": lambda: K.combine(g[0], g[1], g[2], BETA, eps),
            "triton_cold": cold(lambda: K.combine(g[0], g[1], g[2], BETA, eps)),
            "reference": lambda: R.combine(g[0], g[1], g[2], BETA, eps)}),
    }
    rows = []
    for op, (nbytes, provs) in cases.items():
        roof_ms = nbytes / bw * 1e3
        mine = []
        for name, fn in provs.items():
            ms, peak = bench(fn, rep_ms=rep_ms)
            mine.append({"params": n, "tensors": len(th), "config": cfg, "op": op, "provider": name, "ms": ms,
                         "bytes": nbytes, "roofline_ms": roof_ms, "x_roofline": ms / roof_ms,
                         "host_syncs": host_syncs(fn), "peak_extra_GiB": peak})
        ref_ms = next(r["ms"] for r in mine if r["provider"] == "reference")
        for r in mine:
            r["x_reference"] = r["ms"] / ref_ms
        rows += mine
    return rows, found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default="4e6,41.6e6", help="comma-separated parameter counts (default %(default)s)")
    p.add_argument("--configs", default="fp32,bf16", help=f"comma-separated, from {sorted(CONFIGS)}")
    p.add_argument("--json", metavar="PATH", help="write all rows and checks here as JSON")
    p.add_argument("--rep-ms", type=int, default=300, help="do_bench repetition time per provider")
    a = p.parse_args()
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        p.error(f"unknown configs {bad}; choose from {sorted(CONFIGS)}")
    sizes = [float(x) for x in a.params.split(",") if x.strip()]
    if not torch.cuda.is_available():
        sys.exit("bench_fd_hvp.py measures GPU kernels: no CUDA device")
    import triton

    from negint_ds.kernels import fd_hvp_triton as K

    bw = copy_bandwidth()
    report = {"device": torch.cuda.get_device_name(), "copy_bandwidth_TBps": bw / 1e12,
              "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "chunk": K.CHUNK, "block": K.BLOCK,
              "rows": [], "checks": []}
    print(json.dumps({k: report[k] for k in ("device", "copy_bandwidth_TBps", "torch", "triton")}))
    print("\n| params | config | op | provider | ms | roofline ms | × roofline | × reference | host syncs |"
          " peak extra GiB |\n|---|---|---|---|---|---|---|---|---|---|")
    for total in sizes:
        for cfg in configs:
            rows, found = measure(K, total, cfg, bw, a.rep_ms)
            for c in found:
                if not c["ok"]:
                    print(f"CHECK FAILED: {c}", file=sys.stderr)
            for r in rows:
                print(f"| {r['params'] / 1e6:.1f}M | {cfg} | {r['op']} | {r['provider']} | {r['ms']:.3f} | "
                      f"{r['roofline_ms']:.3f} | {r['x_roofline']:.2f} | {r['x_reference']:.2f} | "
                      f"{r['host_syncs']} | {r['peak_extra_GiB']:.2f} |", flush=True)
            report["rows"] += rows
            report["checks"] += found
            torch.cuda.empty_cache()
            if a.json:
                with open(a.json, "w", encoding="utf-8") as f:
                    json.dump(json_safe(report), f, indent=2, allow_nan=False)
    if not all(c["ok"] for c in report["checks"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
