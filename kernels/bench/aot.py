"""Ahead-of-time compilation of Triton kernels for Hopper (sm_90a) on a machine without a GPU.

Triton's own compile path (``triton.compile`` with a ``GPUTarget``) lowers a kernel to PTX and, with the
``ptxas`` it bundles, to a cubin; neither step needs a GPU. From those we read what decides whether a kernel
can reach its roofline on an H100:

* registers per thread and spills (``ptxas -v``: stack frame, spill stores/loads; ``LDL``/``STL`` in SASS),
* static shared memory (Triton's metadata; the H100 opt-in limit per block is 232,448 B),
* the matrix instruction kind in SASS: ``HGMMA`` (wgmma, sm_90a) or ``HMMA`` (mma.sync, the slower path),
* vector width of global loads/stores (``LDG.E.128`` is a 16-byte access per thread).

A :class:`Variant` names one concrete specialisation (a kernel, its argument types and constexprs, warps and
pipeline stages) — exactly what the dispatcher launches for one shape class; kernel modules list theirs in
``aot_variants()``. ``kernels/bench/aot_report.py`` prints the table; ``tests/test_aot_report.py`` asserts it.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
import time

H100_SMEM_PER_BLOCK = 232_448  # cudaDevAttrMaxSharedMemoryPerBlockOptin on H100 / H200 (bytes)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One specialisation of a ``@triton.jit`` kernel as the dispatcher launches it.

    Attributes:
        name: label for reports, e.g. ``"adapter_fwd d=512 b=128 bf16"``.
        fn: the ``@triton.jit`` function.
        signature: argument name → Triton type (``"*bf16"``, ``"*fp32"``, ``"i32"``, ``"i64"``, ``"fp32"``)
            for runtime arguments; constexpr arguments go in ``constexprs`` only.
        constexprs: constexpr argument name → value.
        num_warps, num_stages: launch options.
        aligned: runtime arguments Triton would specialise as multiples of 16 (pointers 16-byte aligned,
            strides/sizes divisible by 16), as its JIT does for such values.
        expect_mma: ``"HGMMA"`` (wgmma), ``"HMMA"`` or None (no matrix instructions expected).
    """

    name: str
    fn: object
    signature: dict
    constexprs: dict
    num_warps: int = 4
    num_stages: int = 3
    aligned: tuple = ()
    expect_mma: str | None = None


@dataclasses.dataclass
class AotResult:
    """What compiling one :class:`Variant` for sm_90a gave."""

    variant: Variant
    registers: int
    stack_bytes: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int
    mma: tuple  # sorted distinct SASS matrix opcodes, e.g. ("HGMMA.64x128x16.F32.BF16",)
    vector_loads: int  # 16-byte global loads (LDG.E.128) in SASS
    scalar_loads: int  # other global loads
    compile_s: float

    @property
    def mma_kind(self) -> str:
        """``"HGMMA"``, ``"HMMA"``, ``"mixed"`` or ``"none"``."""
        kinds = {m.split(".")[0] for m in self.mma}
        return "none" if not kinds else (kinds.pop() if len(kinds) == 1 else "mixed")

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads

    def problems(self) -> list[str]:
        """What contradicts the design: spills, too much shared memory, the wrong matrix instructions."""
        out = []
        if self.spills:
            out.append(f"spills {self.spill_stores} B stored / {self.spill_loads} B loaded")
        if self.shared_bytes > H100_SMEM_PER_BLOCK:
            out.append(f"needs {self.shared_bytes} B shared memory > {H100_SMEM_PER_BLOCK}")
        want = self.variant.expect_mma
        if want is not None and self.mma_kind != want:
            out.append(f"matrix instructions {self.mma_kind}, expected {want}")
        return out


def cuda_backend_available() -> str | None:
    """None if this Triton can compile for NVIDIA GPUs here, else why not (for a clear skip reason)."""
    try:
        import triton
        from triton.backends import backends
    except ImportError as e:  # pragma: no cover - triton is a dependency on Linux
        return f"triton is not importable ({e})"
    if "nvidia" not in backends:
        return f"this Triton {triton.__version__} build has no CUDA backend"
    from triton.backends.nvidia.compiler import get_ptxas

    try:
        path = get_ptxas(90).path
    except Exception as e:  # noqa: BLE001 - any failure to locate ptxas means: cannot compile here
        return f"Triton's bundled ptxas for sm_90 cannot be found ({e})"
    if not path or not os.path.isfile(path):
        return f"Triton's bundled ptxas for sm_90 is missing ({path})"
    return None


def _ptxas_report(ptx: str) -> dict:
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([get_ptxas(90).path, "-v", "--gpu-name", "sm_90a", src, "-o", os.path.join(d, "k.o")],
                           capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ptxas failed: {r.stderr.strip()}")
    log = r.stderr + r.stdout

    def num(pattern: str) -> int:
        m = re.search(pattern, log)
        return int(m.group(1)) if m else 0

    return {"registers": num(r"Used (\d+) registers"), "stack_bytes": num(r"(\d+) bytes stack frame"),
            "spill_stores": num(r"(\d+) bytes spill stores"), "spill_loads": num(r"(\d+) bytes spill loads")}


def _sass(cubin: bytes) -> str:
    from triton.backends.nvidia.compiler import get_ptxas

    nvdisasm = os.path.join(os.path.dirname(get_ptxas(90).path), "nvdisasm")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        r = subprocess.run([nvdisasm, path], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"nvdisasm failed: {r.stderr.strip()}")
    return r.stdout


def compile_sm90(v: Variant) -> AotResult:
    """Compile ``v`` for sm_90a (no GPU needed) and read registers, spills, shared memory and SASS.

    Raises:
        RuntimeError: the CUDA backend is unavailable (see :func:`cuda_backend_available`) or ptxas fails.
        triton.CompilationError: the kernel does not compile for these arguments.
    """
    why = cuda_backend_available()
    if why is not None:
        raise RuntimeError(why)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = v.fn.arg_names
    unknown = (set(v.signature) | set(v.constexprs)) - set(names)
    missing = set(names) - set(v.signature) - set(v.constexprs)
    if unknown or missing:
        raise ValueError(f"{v.name}: arguments unknown {sorted(unknown)}, missing {sorted(missing)}")
    sig = {n: ("constexpr" if n in v.constexprs else v.signature[n]) for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in v.aligned}
    t0 = time.perf_counter()
    k = triton.compile(ASTSource(v.fn, sig, constexprs=dict(v.constexprs), attrs=attrs),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": v.num_warps,
                                                                   "num_stages": v.num_stages})
    seconds = time.perf_counter() - t0
    rep = _ptxas_report(k.asm["ptx"])
    sass = _sass(k.asm["cubin"])
    loads = re.findall(r"\bLDG\.E(\.\S+)?", sass)
    return AotResult(variant=v, shared_bytes=int(k.metadata.shared), compile_s=seconds,
                     mma=tuple(sorted(set(re.findall(r"\b(?:HGMMA|HMMA)\.[\w.]+", sass)))),
                     vector_loads=sum(1 for s in loads if s and s.startswith(".128")),
                     scalar_loads=sum(1 for s in loads if not (s and s.startswith(".128"))), **rep)
