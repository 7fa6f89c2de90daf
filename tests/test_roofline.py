"""Roofline arithmetic (max(bytes / bandwidth, FLOPs / dense peak)) and the adapter benchmark's plumbing, on CPU.

The benchmark itself measures on a GPU; here its pure parts run: the byte and FLOP counts, the peak table,
the per-shape correctness check (fp64 reference, every provider, failures caught), the targets, and a
``--device cpu`` smoke run of ``main`` that writes the JSON.
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from negint_ds.kernels.bench import bench_adapter as B
from negint_ds.kernels.bench import roofline as R

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H100 = "NVIDIA H100 80GB HBM3"


def test_adapter_bytes_count_each_tensor_once():
    N, d, b, e = 1000, 64, 16, 2
    assert R.adapter_bytes(N, d, b, e, "fwd") == (N * d + 2 * d * b + b + d + N * d) * e  # x, weights in; y out
    # x, dy, W_down, W_up, b_down in; dx, dW_down, dW_up, db_down, db_up out
    assert R.adapter_bytes(N, d, b, e, "bwd") == (2 * N * d + 2 * d * b + b + N * d + 2 * d * b + b + d) * e
    assert R.adapter_bytes(N, d, b, e, "full") == \
        R.adapter_bytes(N, d, b, e, "fwd") + R.adapter_bytes(N, d, b, e, "bwd")
    assert R.adapter_bytes(N, d, b, 4, "full") == 2 * R.adapter_bytes(N, d, b, 2, "full")


def test_adapter_flops_with_and_without_recompute():
    N, d, b = 32768, 1024, 256
    assert R.adapter_flops(N, d, b, "fwd") == 4 * N * d * b
    assert R.adapter_flops(N, d, b, "bwd") == 10 * N * d * b
    assert R.adapter_flops(N, d, b, "full") == 14 * N * d * b
    assert R.adapter_flops(N, d, b, "bwd", recompute=False) == 8 * N * d * b
    assert R.adapter_flops(N, d, b, "full", recompute=False) == 12 * N * d * b
    for bad in (lambda: R.adapter_flops(N, d, b, "both"), lambda: R.adapter_bytes(N, d, b, 2, "fwdbwd"),
                lambda: R.adapter_flops(-1, d, b, "fwd")):
        with pytest.raises(ValueError):
            bad()


def test_roofline_is_the_larger_of_bytes_and_flops_time():
    assert R.roofline_seconds(3e9, 5e11, 3e12, 1e15) == pytest.approx(1e-3)  # bytes 1 ms > FLOPs 0.5 ms
    assert R.roofline_seconds(3e9, 2e12, 3e12, 1e15) == pytest.approx(2e-3)  # compute-bound
    assert R.roofline_seconds(6e9, 1e12, 3e12, 1e15) == pytest.approx(2e-3)  # memory-bound
    assert R.roofline_bound(3e9, 2e12, 3e12, 1e15) == "compute"
    assert R.roofline_bound(6e9, 1e12, 3e12, 1e15) == "memory"
    for args in ((1, 1, 0, 1), (1, 1, 1, 0), (-1, 1, 1, 1), (1, -1, 1, 1)):
        with pytest.raises(ValueError):
            R.roofline_seconds(*args)


def test_adapter_turns_compute_bound_from_d_1024_in_bf16_on_an_h100():
    # the point: with ~3 TB/s and 989.4 TFLOP/s the FLOP term wins for full fwd+bwd at d ≥ 1024
    bw, peak = 3.0e12, R.dense_peak_flops(H100, "bf16")
    bound = {d: R.roofline_bound(R.adapter_bytes(32768, d, d // 4, 2, "full"),
                                 R.adapter_flops(32768, d, d // 4, "full"), bw, peak) for d in (512, 768, 1024, 2048)}
    assert bound == {512: "memory", 768: "memory", 1024: "compute", 2048: "compute"}
    n, f = R.adapter_bytes(32768, 2048, 512, 2, "full"), R.adapter_flops(32768, 2048, 512, "full")
    assert R.roofline_seconds(n, f, bw, peak) == pytest.approx(f / peak) and f / peak > 1.9 * n / bw


def test_dense_peak_table_and_override():
    tf = 1e12
    assert R.dense_peak_flops(H100, "bf16") == pytest.approx(989.4 * tf)
    assert R.dense_peak_flops("NVIDIA H100 SXM5 80GB", "fp16") == pytest.approx(989.4 * tf)
    assert R.dense_peak_flops(H100, "tf32") == pytest.approx(494.7 * tf)
    assert R.dense_peak_flops(H100, "fp32") == pytest.approx(66.9 * tf)
    assert R.dense_peak_flops("NVIDIA H100 PCIe", "bf16") == pytest.approx(756 * tf)
    assert R.dense_peak_flops("NVIDIA H200", "bf16") == pytest.approx(989.4 * tf)
    assert R.dense_peak_flops("NVIDIA H100 NVL", "bf16") is None  # not in the table: override or measure
    assert R.dense_peak_flops("Tesla T4", "bf16") is None
    assert R.dense_peak_flops("Tesla T4", "bf16", override_tflops=65) == pytest.approx(65 * tf)
    assert R.dense_peak_flops(H100, "bf16", override_tflops=800) == pytest.approx(800 * tf)  # override wins
    assert R.matmul_precision(torch.bfloat16) == "bf16" and R.matmul_precision(torch.float32) == "fp32"
    assert R.matmul_precision(torch.float32, allow_tf32=True) == "tf32"
    for bad in (lambda: R.dense_peak_flops(H100, "int8"), lambda: R.dense_peak_flops(H100, "bf16", 0),
                lambda: R.matmul_precision(torch.int8)):
        with pytest.raises(ValueError):
            bad()


def _ok(T=48, d=32, b=8, dtype=torch.float32):
    inputs, dy = B.make_inputs(T, d, b, dtype, "cpu")
    return inputs, dy, B.reference_outputs(inputs, dy, "gelu")


def test_check_provider_passes_correct_ones_and_catches_wrong_or_raising_ones():
    inputs, dy, refs = _ok()
    for name in ("eager", "gemm-chain", "gemm-chain-recompute"):
        c = B.check_provider(B.make_provider(name), inputs, dy, refs, "gelu", B.TOL["fp32"])
        assert c["ok"] and c["error"] is None and set(c["errors"]) == set(B.OUTPUTS) | {"y_no_grad"}, c

    def wrong_grad(x, wd, bd, wu, bu, act):  # right forward, db_up twice too large
        return B.bottleneck_adapter_reference(x, wd, bd, wu, bu, act) + bu - bu.detach()

    def raises(*a):
        raise RuntimeError("kernel launch failed")

    def wrong_dtype(*a):
        return B.bottleneck_adapter_reference(*[t.double() for t in a[:5]], a[5])

    c = B.check_provider(wrong_grad, inputs, dy, refs, "gelu", B.TOL["fp32"])
    assert not c["ok"] and c["errors"]["db_up"] > 0.5 and c["errors"]["y"] < 1e-6
    c = B.check_provider(raises, inputs, dy, refs, "gelu", B.TOL["fp32"])
    assert not c["ok"] and "kernel launch failed" in c["error"]
    assert not B.check_provider(wrong_dtype, inputs, dy, refs, "gelu", B.TOL["fp32"])["ok"]
    assert B.relative_error(torch.full((2,), float("nan")), torch.ones(2, dtype=torch.float64)) == math.inf


def test_every_shape_compiles_a_fresh_function():
    f1, f2 = B.fresh_function(B.bottleneck_adapter_reference, "512x128"), \
        B.fresh_function(B.bottleneck_adapter_reference, "1024x256")
    assert f1.__code__ is not f2.__code__ and f1.__code__ is not B.bottleneck_adapter_reference.__code__
    inputs, _, refs = _ok()
    assert B.relative_error(f1(*inputs, "gelu"), refs[0]) < 1e-6
    with pytest.raises(ValueError, match="activation"):
        f2(*inputs, "tanh")
    assert callable(B.make_provider("compile", "512x128")) and callable(B.make_provider("max-autotune", "512x128"))
    with pytest.raises(ValueError):
        B.make_provider("cutlass")


def _row(provider, mode, ms, x_roof, d=512):
    return {"T": 32768, "d": d, "b": d // 4, "provider": provider, "mode": mode, "ms": ms, "x_roofline": x_roof}


def test_targets():
    assert B.targets_for(512, "full") == {"max_x_roofline": 1.6, "not_slower_than_baselines": True,
                                          "min_speedup_vs_eager": 5.0}
    assert B.targets_for(768, "full") == {"max_x_roofline": 1.6, "not_slower_than_baselines": True}
    assert B.targets_for(1024, "full")["max_x_roofline"] == 1.5
    assert B.targets_for(2048, "fwd") == {"max_x_roofline": 1.25}
    rows = [_row("triton", "full", 0.10, 1.5), _row("eager", "full", 0.60, 9.0), _row("compile", "full", 0.2, 3.0),
            _row("triton", "fwd", 0.05, 1.3), _row("eager", "fwd", 0.2, 5.0)]
    B.evaluate_targets(rows)
    assert rows[0]["target_ok"] and rows[0]["speedup_vs_eager"] == pytest.approx(6.0)
    assert rows[0]["best_baseline"] == "compile" and rows[1].get("target_ok") is None
    assert rows[3]["target_ok"] is False and "1.30× roofline" in rows[3]["target_misses"][0]
    rows = [_row("triton", "full", 0.30, 1.4, d=1024), _row("gemm-chain", "full", 0.25, 1.2, d=1024),
            _row("triton", "full", 0.15, 1.5), _row("eager", "full", 0.6, 6.0)]
    B.evaluate_targets(rows)
    assert rows[0]["target_ok"] is False and "slower than gemm-chain" in rows[0]["target_misses"][0]
    assert rows[2]["target_ok"] is False and "4.00× vs eager < 5.0×" in rows[2]["target_misses"][0]
    table = B.markdown_table(rows, [])
    assert "| 32768 | 1024 | 256 | triton |" in table and "full MISSED" in table


def _smoke(tmp_path, *extra):
    out = tmp_path / "bench.json"
    rc = B.main(["--device", "cpu", "--dtype", "fp32", "--tokens", "40", "--shapes", "24x6,32x8", "--providers",
                 "eager,gemm-chain", "--bandwidth-tbps", "0.1", "--peak-tflops", "1", "--rep-ms", "5",
                 "--json", str(out), *extra])
    return rc, json.loads(out.read_text())


def test_main_cpu_smoke_run_writes_json_and_fails_on_a_wrong_provider(tmp_path, monkeypatch, capsys):
    rc, res = _smoke(tmp_path)
    assert rc == 0 and res["correct"] and len(res["checks"]) == 4 and len(res["rows"]) == 4 * 3
    for key in ("device", "bandwidth_Bps", "peak_flops", "peak_flops_table", "peak_flops_measured_gemm", "torch",
                "triton", "date", "tolerance"):
        assert key in res
    r = res["rows"][0]
    assert r["roofline_ms"] == pytest.approx(R.roofline_seconds(r["bytes"], r["flops"], 0.1e12, 1e12) * 1e3)
    assert "| 40 | 24 | 6 | gemm-chain | ok" in capsys.readouterr().out
    real = B.make_provider
    monkeypatch.setattr(B, "make_provider", lambda name, tag="": (lambda *a: real("eager")(*a) * 1.1)
                        if name == "gemm-chain" else real(name, tag))
    rc, res = _smoke(tmp_path)
    assert rc == 1 and not res["correct"]
    assert [c["ok"] for c in res["checks"]] == [True, False, True, False]


def test_cli_help_parses_and_rejects_bad_arguments():
    script = os.path.join(REPO, "kernels", "bench", "bench_adapter.py")
    p = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "--json" in p.stdout and "max-autotune" in p.stdout, p.stderr
    for bad in (["--providers", "cutlass"], ["--shapes", "512"], ["--device", "cpu"]):
        with pytest.raises(SystemExit):
            B.parse_args(bad)
