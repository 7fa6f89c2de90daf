"""Bottleneck adapter: fused Triton vs eager vs torch.compile vs the GEMM-epilogue chain, against the roofline (GPU).

    python kernels/bench/bench_adapter.py [--dtype bf16] [--tokens 32768] [--json out.json]
        [--providers triton,eager,compile,max-autotune,gemm-chain] [--peak-tflops 989.4]

Providers (all in the same run, on the same inputs):

* ``triton``: :func:`negint_ds.kernels.adapter_triton.bottleneck_adapter_triton` (fused kernels);
* ``eager``: :func:`negint_ds.kernels.adapter_reference.bottleneck_adapter_reference` (plain torch);
* ``compile``: ``torch.compile(reference)`` (default mode); ``max-autotune``: ``mode="max-autotune"``
  (Inductor GEMM autotuning and CUDA graphs). Each shape compiles a *fresh* copy of the reference
  (its own code object, ``dynamic=False``), so every shape gets its own static specialisation, no shape
  counts against another's recompile limit, and compilation (timed, reported as ``compile_s``) happens
  before and outside the timings;
* ``gemm-chain``: :func:`negint_ds.kernels.adapter_gemm_chain.bottleneck_adapter_gemm_chain` (cuBLAS(Lt)
  GEMMs with fused bias / ReLU / residual epilogues); ``gemm-chain-recompute`` (not in the default set):
  the same with ``recompute=True``.

Shapes (tokens N, d, b): (32768, 512, 128), (32768, 768, 192), (32768, 1024, 256), (32768, 2048, 512).

Correctness, at every shape, before timing: each provider's forward (under autograd and under no_grad, the
two graphs a compiler builds) and all five gradients (dx, dW_down, db_down, dW_up, db_up, for a random dy)
against a float64 reference on the same inputs, as ‖out − ref‖ / ‖ref‖ ≤ 2e-2 (bf16), 3e-3 (fp16),
1e-4 (fp32). Any failure is recorded in the JSON and makes the script exit 1 (after finishing the run).

Timings: median of ``triton.testing.do_bench`` for ``fwd`` (no_grad forward) and ``full`` (forward +
backward, ``torch.autograd.grad`` of all five leaves); ``bwd`` rows are full − fwd (``derived``). Peak
memory: extra bytes allocated during one call (``max-autotune``'s CUDA graphs keep theirs in a private pool
allocated when recorded, so it reads near zero there).

Roofline (:mod:`kernels.bench.roofline`): max(minimum bytes / measured copy bandwidth, FLOPs / dense peak),
FLOPs 4·N·d·b forward, 10·N·d·b backward with the recompute, 14·N·d·b full; the peak is the spec-sheet dense
rate for the device and dtype (``--peak-tflops`` overrides it; a device not in the table uses the measured
GEMM rate, which is reported beside the table value in any case).

Targets for ``triton`` (reported per row, ``--strict-targets`` makes a miss exit 3):

* fwd+bwd ≤ 1.6× roofline for d < 1024 (d = 512: also ≥ 5× faster than eager), ≤ 1.5× for d ≥ 1024;
* fwd+bwd never slower than the best of eager / compile / max-autotune / gemm-chain at any shape;
* forward ≤ 1.25× roofline.

``--json PATH`` writes every row, the checks, device, bandwidth, peaks, torch/triton/CUDA versions and date
(rewritten after every shape, so a run cut short keeps what it measured); a markdown table is printed too.
Expect several minutes on an H100: ``max-autotune`` autotunes the forward and backward GEMMs of each shape.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import types

import torch

if not __package__:  # run as a script: import negint_ds from this checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from negint_ds.atomic import json_safe  # noqa: E402
from negint_ds.kernels.adapter_reference import bottleneck_adapter_reference  # noqa: E402
from negint_ds.kernels.bench import roofline as R  # noqa: E402

SHAPES = [(32768, 512, 128), (32768, 768, 192), (32768, 1024, 256), (32768, 2048, 512)]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TOL = {"bf16": 2e-2, "fp16": 3e-3, "fp32": 1e-4}
PROVIDERS = ("triton", "eager", "compile", "max-autotune", "gemm-chain")
EXTRA_PROVIDERS = ("gemm-chain-recompute",)
BASELINES = ("eager", "compile", "max-autotune", "gemm-chain")  # what triton must never be slower than
OUTPUTS = ("y", "dx", "dW_down", "db_down", "dW_up", "db_up")
COMPILED = {"compile": "default", "max-autotune": "max-autotune"}


def fresh_function(fn, tag: str):
    """A copy of ``fn`` with its own code object (named ``<name>_<tag>``).

    TorchDynamo keeps its compiled-code cache and recompile counter on the code object, so compiling a fresh
    copy per shape and mode gives each its own specialisation instead of recompiling one shared entry.
    """
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}".replace("-", "_"))
    f = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    f.__kwdefaults__ = fn.__kwdefaults__
    return f


def make_provider(name: str, tag: str = ""):
    """The callable ``(x, w_down, b_down, w_up, b_up, activation) -> y`` for provider ``name``.

    Compiled providers are built lazily by ``torch.compile`` (nothing compiles until the first call).

    Raises:
        ValueError: unknown provider.
    """
    if name == "eager":
        return bottleneck_adapter_reference
    if name == "triton":
        from negint_ds.kernels.adapter_triton import bottleneck_adapter_triton

        return bottleneck_adapter_triton
    if name in ("gemm-chain", "gemm-chain-recompute"):
        from negint_ds.kernels.adapter_gemm_chain import bottleneck_adapter_gemm_chain

        if name == "gemm-chain":
            return bottleneck_adapter_gemm_chain
        return lambda *a: bottleneck_adapter_gemm_chain(*a, recompute=True)
    if name in COMPILED:
        return torch.compile(fresh_function(bottleneck_adapter_reference, f"{name}_{tag}"), mode=COMPILED[name],
                             dynamic=False)
    raise ValueError(f"unknown provider {name!r}; choose from {PROVIDERS + EXTRA_PROVIDERS}")


def make_inputs(T: int, d: int, b: int, dtype: torch.dtype, device, seed: int = 0):
    """([x (T, d), W_down (b, d), b_down (b,), W_up (d, b), b_up (d,)], dy (T, d)), unit-scale activations."""
    g = torch.Generator(device=device).manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, device=device, dtype=torch.float32, generator=g) * scale).to(dtype)

    inputs = [rnd(T, d), rnd(b, d, scale=d ** -0.5), rnd(b, scale=0.1), rnd(d, b, scale=b ** -0.5), rnd(d, scale=0.1)]
    return inputs, rnd(T, d)


def reference_outputs(inputs, dy, activation: str) -> list[torch.Tensor]:
    """[y, dx, dW_down, db_down, dW_up, db_up] of the float64 reference on the same inputs."""
    leaves = [t.detach().double().requires_grad_(True) for t in inputs]
    y = bottleneck_adapter_reference(*leaves, activation)
    return [y.detach()] + [g.detach() for g in torch.autograd.grad(y, leaves, dy.double())]


def relative_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    """‖a − ref‖ / ‖ref‖ in float64 (inf for a shape mismatch or a non-finite value)."""
    if a.shape != ref.shape:
        return float("inf")
    err = float((a.detach().double() - ref).norm() / ref.norm().clamp_min(1e-30))
    return err if err == err else float("inf")  # NaN → inf, so it fails every tolerance


def _mark_step(cudagraphs: bool) -> None:
    if cudagraphs:  # a new iteration for CUDA-graph trees: earlier outputs may be overwritten
        torch.compiler.cudagraph_mark_step_begin()


def check_provider(fn, inputs, dy, refs, activation: str, tol: float, cudagraphs: bool = False) -> dict:
    """Relative errors of ``fn``'s forward (with and without autograd) and five gradients vs ``refs``.

    Returns ``{"errors": {name: err}, "max_error", "tol", "ok", "error"}``; an exception inside ``fn`` is
    caught and reported (``ok`` False, ``error`` its text) so that one broken provider does not end the run.
    """
    errors: dict[str, float] = {}
    try:
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        _mark_step(cudagraphs)
        y = fn(*leaves, activation)
        grads = torch.autograd.grad(y, leaves, dy)
        outs = [y.detach().clone()] + [g.clone() for g in grads]  # clone: CUDA-graph outputs get reused
        _mark_step(cudagraphs)
        with torch.no_grad():
            y_inf = fn(*leaves, activation).clone()
        errors = {n: relative_error(o, r) for n, o, r in zip(OUTPUTS, outs, refs)}
        errors["y_no_grad"] = relative_error(y_inf, refs[0])
        dtypes_ok = all(o.dtype == i.dtype for o, i in zip(outs[1:], inputs)) and outs[0].dtype == inputs[0].dtype
        err_text = None if dtypes_ok else "output or gradient dtype differs from its input's"
    except Exception as e:  # noqa: BLE001 - reported in the JSON and the exit status, the run goes on
        err_text = f"{type(e).__name__}: {e}"
    worst = max(errors.values(), default=float("inf"))
    ok = err_text is None and worst <= tol
    return {"errors": errors, "max_error": worst, "tol": tol, "ok": ok, "error": err_text}


def targets_for(d: int, mode: str) -> dict:
    """The triton targets at width ``d`` for ``mode`` (``fwd``/``full``; ``bwd`` has none): a dict of
    ``max_x_roofline`` and optionally ``min_speedup_vs_eager`` / ``not_slower_than_baselines``."""
    if mode == "fwd":
        return {"max_x_roofline": 1.25}
    if mode == "full":
        t = {"max_x_roofline": 1.6 if d < 1024 else 1.5, "not_slower_than_baselines": True}
        if d == 512:
            t["min_speedup_vs_eager"] = 5.0
        return t
    return {}


def evaluate_targets(rows: list[dict]) -> None:
    """Annotate rows in place with ``speedup_vs_eager`` and, for triton, ``target`` and ``target_ok``.

    Rows are dicts with ``T, d, b, provider, mode, ms, x_roofline`` (as :func:`main` makes them). A missing
    baseline (not in ``--providers``) is skipped; ``target_ok`` is None where the mode has no target.
    """
    by_key = {(r["T"], r["d"], r["b"], r["mode"], r["provider"]): r for r in rows}
    for r in rows:
        key = (r["T"], r["d"], r["b"], r["mode"])
        eager = by_key.get(key + ("eager",))
        r["speedup_vs_eager"] = eager["ms"] / r["ms"] if eager and r["ms"] > 0 else None
        if r["provider"] != "triton":
            continue
        t = targets_for(r["d"], r["mode"])
        r["target"] = t
        if not t:
            r["target_ok"], r["target_misses"] = None, []
            continue
        misses = []
        if r["x_roofline"] > t["max_x_roofline"]:
            misses.append(f"{r['x_roofline']:.2f}× roofline > {t['max_x_roofline']}×")
        if "min_speedup_vs_eager" in t and r["speedup_vs_eager"] is not None \
                and r["speedup_vs_eager"] < t["min_speedup_vs_eager"]:
            misses.append(f"{r['speedup_vs_eager']:.2f}× vs eager < {t['min_speedup_vs_eager']}×")
        if t.get("not_slower_than_baselines"):
            base = [by_key[key + (p,)] for p in BASELINES if key + (p,) in by_key]
            if base:
                best = min(base, key=lambda q: q["ms"])
                r["best_baseline"] = best["provider"]
                if r["ms"] > best["ms"]:
                    misses.append(f"slower than {best['provider']} ({r['ms']:.3f} > {best['ms']:.3f} ms)")
        r["target_ok"], r["target_misses"] = not misses, misses


def markdown_table(rows: list[dict], checks: list[dict]) -> str:
    """The per-(shape, provider) markdown table: check, fwd and fwd+bwd time (× roofline), vs eager, memory."""
    ok = {(c["T"], c["d"], c["b"], c["provider"]): c for c in checks}
    lines = ["| tokens | d | b | provider | check (max rel err) | fwd ms (× roofline) | fwd+bwd ms (× roofline) | "
             "fwd+bwd vs eager | fwd+bwd peak GiB | compile s | triton target |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["T"], r["d"], r["b"], r["provider"]) for r in rows))
    for k in keys:
        cell = {r["mode"]: r for r in rows if (r["T"], r["d"], r["b"], r["provider"]) == k}
        c = ok.get(k, {})
        chk = ("ok " if c.get("ok") else "FAIL ") + (f"{c['max_error']:.1e}" if c.get("errors") else
                                                       (c.get("error") or "")[:40])

        def t(m, cell=cell):
            return f"{cell[m]['ms']:.3f} ({cell[m]['x_roofline']:.2f}×)" if m in cell else "—"

        full = cell.get("full", {})
        sp = full.get("speedup_vs_eager")
        tgt = []
        for m in ("fwd", "full"):
            if cell.get(m, {}).get("target_ok") is not None:
                tgt.append(f"{m} {'met' if cell[m]['target_ok'] else 'MISSED'}")
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {chk} | {t('fwd')} | {t('full')} | "
                     f"{'—' if sp is None else f'{sp:.2f}×'} | {full.get('peak_gib', float('nan')):.3f} | "
                     f"{c.get('compile_s', 0.0):.1f} | {', '.join(tgt) or '—'} |")
    return "\n".join(lines)


def _bench_wallclock(fn, warmup_ms: int = 50, rep_ms: int = 300) -> tuple[float, float]:
    """(median wall-clock ms, NaN) of ``fn`` for ``--device cpu`` smoke runs (no memory statistics there)."""
    fn()
    times = []
    deadline = time.perf_counter() + rep_ms / 1e3
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 100):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2], float("nan")


def _versions() -> dict:
    v = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    try:
        import triton

        v["triton"] = triton.__version__
    except ImportError:
        v["triton"] = None
    return v


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="bf16", choices=DTYPES)
    p.add_argument("--activation", default="gelu", choices=("gelu", "relu"))
    p.add_argument("--tokens", type=int, default=None, help="override the token count of every shape")
    p.add_argument("--shapes", default=None, help="comma-separated dxb list (e.g. 512x128,2048x512); default: "
                   + ", ".join(f"{d}x{b}" for _, d, b in SHAPES))
    p.add_argument("--providers", default=",".join(PROVIDERS),
                   help=f"comma-separated subset of {', '.join(PROVIDERS + EXTRA_PROVIDERS)}")
    p.add_argument("--json", default=None, metavar="PATH", help="write all rows and run metadata as JSON here")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense matmul peak (TFLOP/s) for the roofline instead of the device table")
    p.add_argument("--bandwidth-tbps", type=float, default=None,
                   help="memory bandwidth (TB/s, read + write) instead of the measured copy bandwidth")
    p.add_argument("--warmup-ms", type=int, default=50)
    p.add_argument("--rep-ms", type=int, default=300)
    p.add_argument("--strict-targets", action="store_true", help="exit 3 if a triton target is missed")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cpu: a smoke run of the script itself (wall-clock timings, meaningless against the "
                        "roofline; needs --bandwidth-tbps and --peak-tflops)")
    a = p.parse_args(argv)
    a.provider_list = [s.strip() for s in a.providers.split(",") if s.strip()]
    bad = [s for s in a.provider_list if s not in PROVIDERS + EXTRA_PROVIDERS]
    if bad or not a.provider_list:
        p.error(f"unknown providers {bad}; choose from {', '.join(PROVIDERS + EXTRA_PROVIDERS)}")
    if a.device == "cpu" and (a.bandwidth_tbps is None or a.peak_tflops is None):
        p.error("--device cpu needs --bandwidth-tbps and --peak-tflops (there is no table or copy benchmark)")
    if a.shapes:
        try:
            dbs = [tuple(int(v) for v in s.lower().split("x")) for s in a.shapes.split(",")]
            assert all(len(t) == 2 and min(t) > 0 for t in dbs)
        except (ValueError, AssertionError):
            p.error(f"--shapes must look like 512x128,1024x256, got {a.shapes!r}")
        a.shape_list = [(a.tokens or 32768, d, b) for d, b in dbs]
    else:
        a.shape_list = [(a.tokens or T, d, b) for T, d, b in SHAPES]
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    cuda = a.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("bench_adapter.py measures GPU kernels: no CUDA device", file=sys.stderr)
        return 2
    dt = DTYPES[a.dtype]
    name = torch.cuda.get_device_name() if cuda else "cpu"
    precision = R.matmul_precision(dt, torch.backends.cuda.matmul.allow_tf32)
    bw = a.bandwidth_tbps * 1e12 if a.bandwidth_tbps else R.copy_bandwidth()
    peak_table = R.dense_peak_flops(name, precision)
    peak_measured = R.measured_matmul_peak(dt) if cuda else None
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    bench = R.bench if cuda else _bench_wallclock
    if a.peak_tflops is not None:
        peak, peak_source = R.dense_peak_flops(name, precision, a.peak_tflops), "--peak-tflops"
    elif peak_table is not None:
        peak, peak_source = peak_table, f"table ({R.device_key(name)}, {precision} dense)"
    else:
        peak, peak_source = peak_measured, "measured (device not in the table)"
    meta = {"device": name, "capability": list(torch.cuda.get_device_capability()) if cuda else None, "dtype": a.dtype,
            "activation": a.activation, "matmul_precision": precision,
            "bandwidth_Bps": bw, "bandwidth_source": "--bandwidth-tbps" if a.bandwidth_tbps else "measured copy",
            "peak_flops": peak, "peak_source": peak_source, "peak_flops_table": peak_table,
            "peak_flops_measured_gemm": peak_measured, "tolerance": TOL[a.dtype], **_versions(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "argv": sys.argv[1:] if argv is None else list(argv),
            "targets": {"fwd": targets_for(1024, "fwd"), "full d<1024": targets_for(768, "full"),
                        "full d=512": targets_for(512, "full"), "full d>=1024": targets_for(1024, "full")}}
    print(json.dumps(meta), flush=True)
    rows: list[dict] = []
    checks: list[dict] = []

    def dump():
        if a.json:
            tmp = a.json + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(json_safe({**meta, "correct": all(c["ok"] for c in checks),
                                     "targets_met": all(r.get("target_ok") is not False for r in rows),
                                     "checks": checks, "rows": rows}), f, indent=1, default=str, allow_nan=False)
            os.replace(tmp, a.json)

    for T, d, b in a.shape_list:
        inputs, dy = make_inputs(T, d, b, dt, a.device)
        refs = reference_outputs(inputs, dy, a.activation)
        e = inputs[0].element_size()
        shape_rows = []
        for prov in a.provider_list:
            try:
                fn = make_provider(prov, tag=f"{d}x{b}")
            except Exception as e:  # noqa: BLE001 - e.g. triton missing: a failed check, the run goes on
                checks.append({"errors": {}, "max_error": float("inf"), "tol": TOL[a.dtype], "ok": False,
                               "error": f"{type(e).__name__}: {e}", "T": T, "d": d, "b": b, "provider": prov,
                               "compile_s": 0.0})
                continue
            cg = prov == "max-autotune"  # CUDA graphs (cudagraph trees) in that mode
            leaves = [t.clone().requires_grad_(True) for t in inputs]

            def fwd(fn=fn, leaves=leaves, cg=cg):  # bound now: timed within this iteration
                _mark_step(cg)
                with torch.no_grad():
                    fn(*leaves, a.activation)

            def full(fn=fn, leaves=leaves, cg=cg, dy=dy):
                _mark_step(cg)
                torch.autograd.grad(fn(*leaves, a.activation), leaves, dy)

            sync()
            t0 = time.perf_counter()
            c = check_provider(fn, inputs, dy, refs, a.activation, TOL[a.dtype], cudagraphs=cg)  # compiles here
            sync()
            # compile_s: the check's first calls, i.e. compiling the autograd and no_grad graphs (plus one run)
            c.update(T=T, d=d, b=b, provider=prov, compile_s=time.perf_counter() - t0 if prov in COMPILED else 0.0)
            checks.append(c)
            print(json.dumps(json_safe({"check": c}), default=str), flush=True)
            if c["error"] is not None:
                continue  # nothing to time
            measured = {}
            for mode, f in (("fwd", fwd), ("full", full)):
                ms, peak_gib = bench(f, a.warmup_ms, a.rep_ms)
                measured[mode] = (ms, peak_gib)
            measured["bwd"] = (measured["full"][0] - measured["fwd"][0], float("nan"))
            for mode in ("fwd", "bwd", "full"):
                ms, peak_gib = measured[mode]
                nbytes, flops = R.adapter_bytes(T, d, b, e, mode), R.adapter_flops(T, d, b, mode)
                roof_ms = R.roofline_seconds(nbytes, flops, bw, peak) * 1e3
                r = {"T": T, "d": d, "b": b, "provider": prov, "mode": mode, "ms": ms, "peak_gib": peak_gib,
                     "roofline_ms": roof_ms, "x_roofline": ms / roof_ms, "bytes": nbytes, "flops": flops,
                     "bound": R.roofline_bound(nbytes, flops, bw, peak), "derived": mode == "bwd",
                     "check_ok": c["ok"], "tflops": flops / (ms * 1e-3) / 1e12 if ms > 0 else None}
                shape_rows.append(r)
        evaluate_targets(shape_rows)
        for r in shape_rows:
            print(json.dumps(json_safe(r), default=str), flush=True)
        rows.extend(shape_rows)
        dump()
        inputs = dy = refs = leaves = fn = None  # free this shape's tensors and compiled callables
        torch._dynamo.reset()  # drop this shape's compiled graphs (and CUDA-graph pools) before the next
        if cuda:
            torch.cuda.empty_cache()
    print()
    print(markdown_table(rows, checks))
    correct = all(c["ok"] for c in checks)
    met = all(r.get("target_ok") is not False for r in rows)
    print(f"\ncorrectness: {'all providers within ' + str(TOL[a.dtype]) if correct else 'FAILED'}; "
          f"triton targets: {'met' if met else 'missed'}; roofline peak {peak / 1e12:.1f} TFLOP/s ({peak_source}), "
          f"measured GEMM {(peak_measured or float('nan')) / 1e12:.1f} TFLOP/s, bandwidth {bw / 1e12:.2f} TB/s")
    dump()
    if not correct:
        return 1
    return 3 if a.strict_targets and not met else 0


if __name__ == "__main__":
    sys.exit(main())
