"""Every adapter kernel configuration the dispatcher can launch, compiled ahead of time for sm_90a (Hopper) on
this machine without a GPU (``kernels/bench/aot_report.py``, run in a subprocess: the CPU tests' interpreter
mode replaces @triton.jit functions, so compilation needs a clean process): no register spills where the design
promises none, wgmma for 16-bit storage, and static shared memory within both the recorded figure (which the
eligibility rule trusts) and an H100's limit."""
import json
import os
import subprocess
import sys

import pytest

from negint_ds.kernels.bench.aot import H100_SMEM_PER_BLOCK, cuda_backend_available

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHY = cuda_backend_available()
pytestmark = [pytest.mark.skipif(WHY is not None, reason=f"cannot compile for sm_90a: {WHY}"), pytest.mark.slow]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    r = subprocess.run([sys.executable, os.path.join(REPO, "kernels", "bench", "aot_report.py"), "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=1200)
    assert out.exists(), r.stderr[-3000:]
    return {row["variant"]: row for row in json.loads(out.read_text())}, r


def test_every_variant_compiles_as_designed(report):
    rows, proc = report
    assert len(rows) >= 36, "every (kernel, dtype, BLOCK_B) class of the tables is compiled"
    bad = {name: row["problems"] for name, row in rows.items() if row["problems"]}
    assert not bad, bad
    assert proc.returncode == 0, proc.stdout[-2000:]
    for name, row in rows.items():
        assert row["shared_bytes"] <= H100_SMEM_PER_BLOCK, name
        if row["recorded_smem"] is not None:
            assert row["shared_bytes"] <= row["recorded_smem"], name
        if " bf16 " in f" {name} " and name.split()[0] in ("fwd", "rows", "weights"):
            assert row["mma"] == "HGMMA", (name, row["mma"])
        if row["spill_free_by_design"]:
            assert row["spill_bytes"] == 0, (name, row["spill_bytes"])


def test_the_paper_shape_is_spill_free_wgmma_in_every_kernel(report):
    """d = 512, b = 128 (paper) in bf16: forward, backward row and weight kernels all use wgmma, no spills."""
    rows, _ = report
    paper = {n.split()[0]: r for n, r in rows.items() if n.split()[1] == "bf16" and "BLOCK_B=128 #0" in n}
    assert set(paper) == {"fwd", "rows", "weights"}
    for kernel, r in paper.items():
        assert r["mma"] == "HGMMA" and r["spill_bytes"] == 0, (kernel, r)


def test_fd_hvp_variants_are_spill_free_and_vectorised(report):
    """The FD-HVP ops' specialisations (``fd_hvp_triton.aot_variants()``, compiled in the same report): every op
    in fp32, bf16 and fp16, no spills, and 16-byte loads wherever the alignment is promised — none in the
    unaligned control."""
    from negint_ds.kernels import fd_hvp_triton as K

    rows, _ = report
    names = [v.name for v in K.aot_variants()]
    assert set(names) <= set(rows)
    for op in ("sumsq", "axpy", "combine"):
        for dt in ("fp32", "bf16", "fp16"):
            assert any(op in n and dt in n.split("v=")[0] for n in names), (op, dt, names)
    for name in names:
        r = rows[name]
        assert r["problems"] == [] and r["spill_bytes"] == 0, r
        if "unaligned" in name:
            assert r["vector_loads"] == 0, f"control: without the alignment promise loads stay scalar: {r}"
        else:
            assert r["vector_loads"] > 0, f"no 16-byte loads: {r}"
