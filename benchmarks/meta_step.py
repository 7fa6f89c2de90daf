"""Time and peak memory of one meta (+meta adpt) step relative to one plain step, measured in the same run.

    python benchmarks/meta_step.py --recipe jointpair_en_sw_meta_adpt --deepspeed_config ds_configs/gpu_bf16_zero1.json
    python benchmarks/meta_step.py --recipe jointpair_en_sw_meta_adpt_demo --deepspeed_config ds_configs/cpu_zero2.json

Runs each mode in its own process through the real DeepSpeed trainer (``Trainer.train_step``):

* ``plain``: the same model with its language adapters trained jointly (+adpt) — the baseline step;
* ``fd``: Algorithm 1 with the finite-difference hypergradient (Eq. 8, central), a meta update every step,
  ``meta.precision: fp32`` (the default); ``fd_working``: the same in the training precision;
  ``fd_forward``: forward differences (one probe);
* ``exact``: Algorithm 1 with the exact second-order term (double backward, math SDPA kernel);
  ``exact_working``: the same in the training precision;
* ``official``: the official code's variant (θ first, fresh batch, exact, adapters also on the train loss);
* ``jointpair``: the model without adapters (for reference).

Prints one JSON line per mode and a table of ratios to ``plain``. Peak memory (CUDA only) is the
largest allocation during the timed steps above what was allocated before them. Options that trade
fidelity for speed (``--set meta.val_batch_size=…``, ``meta.langs_per_step``, ``meta.every``) can be
passed with ``--set``; the recipe's data must be prepared first (``python -m negint_ds.prepare``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

_FD = ["meta.enabled=true", "meta.hypergradient=finite_difference"]
_EXACT = ["meta.enabled=true", "meta.hypergradient=exact"]
MODES = {"plain": ["meta.enabled=false"], "fd": _FD, "fd_forward": [*_FD, "meta.fd_scheme=forward"],
         "fd_working": [*_FD, "meta.precision=working"], "exact": _EXACT,
         "exact_working": [*_EXACT, "meta.precision=working"],
         "official": [*_EXACT, "meta.order=theta_first", "meta.phi_batch=fresh", "meta.phi_train_loss=true"],
         "jointpair": ["meta.enabled=false", "model.adapters.kind=none"]}


def measure(args) -> dict:
    """One mode in this process: warm up, then time ``--steps`` training steps."""
    import socket

    import torch

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import deepspeed

    from negint_ds.train.prefetch import Prefetcher
    from negint_ds.train.setup import RunArgs, prepare_run
    from negint_ds.train.trainer import Trainer

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", auto_mpi_discovery=False)
    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as tmp:
        run = RunArgs(run_dir=os.path.join(tmp, "run"), config=args.recipe, deepspeed_config=args.deepspeed_config,
                      overrides=[*args.set, *MODES[args.mode], f"train.max_steps={total}"], progress=False)
        t = Trainer(prepare_run(run, 1), rank=0, world_size=1, resume=False, overwrite=False, progress=False)
        t.prefetcher = Prefetcher(t.batches, 0, total, pin=t.device.type == "cuda")
        cuda = t.device.type == "cuda"
        times = []
        for step in range(total):
            if step == args.warmup and cuda:
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            _, loss, _ = t.train_step(step)
            float(loss)  # synchronise
            if step >= args.warmup:
                times.append(time.perf_counter() - t0)
        out = {"mode": args.mode, "step_s": statistics.median(times), "step_s_all": times,
               "device": torch.cuda.get_device_name() if cuda else "cpu", "recipe": args.recipe,
               "ds_config": args.deepspeed_config, "set": args.set}
        if cuda:
            out["peak_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30
            out["resident_gib"] = base / 2**30
        if t.phi is not None:
            out["meta_stats"] = t.phi.stats
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", required=True)
    p.add_argument("--deepspeed_config", required=True)
    p.add_argument("--modes", default="plain,fd,fd_forward,fd_working,exact,exact_working,official,jointpair")
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    if args.mode:
        from negint_ds.train.dist import shutdown_distributed

        print("RESULT " + json.dumps(measure(args)), flush=True)
        shutdown_distributed()  # gloo's threads joined before exit (see its docstring)
        return
    results = {}
    for mode in args.modes.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--recipe", args.recipe, "--deepspeed_config",
               args.deepspeed_config, "--mode", mode, "--steps", str(args.steps), "--warmup", str(args.warmup)]
        for s in args.set:
            cmd += ["--set", s]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            print(f"{mode}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results[mode] = json.loads(line[7:])
        print(json.dumps(results[mode]), flush=True)
    base = results.get("plain")
    if base:
        print("\n| mode | step (ms) | x plain | peak extra memory (GiB) | x plain |\n|---|---|---|---|---|")
        for mode, r in results.items():
            mem = r.get("peak_gib")
            mem_ratio = f"{mem / base['peak_gib']:.2f}" if mem is not None and base.get("peak_gib") else "n/a"
            print(f"| {mode} | {1000 * r['step_s']:.1f} | {r['step_s'] / base['step_s']:.2f} | "
                  f"{'n/a' if mem is None else f'{mem:.2f}'} | {mem_ratio} |")


if __name__ == "__main__":
    main()
