"""Command line of ``launchers/experiment.py``: run a spec's grid end to end and assemble its tables and findings.

    python launchers/experiment.py --spec paper_demo                 # everything, one process at a time
    python launchers/experiment.py --spec paper_demo --dry_run       # the runs, their state and estimated cost
    python launchers/experiment.py --spec paper --emit_slurm         # DeepSpeed commands + a SLURM job array
    python launchers/experiment.py --spec paper_demo --report_only   # tables from whatever has finished

Run it again after an interruption or a failure: finished stages are skipped (recognised by their output files),
interrupted ones continue with ``--resume``, failed ones are tried again. Exit codes: 0 every run finished, 1 some
run failed (the report names it and its log), 2 a bad spec (nothing written), 130 interrupted.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys

from ..config.loader import ConfigError
from .execute import Executor, ExperimentError, load_status, stage_state, write_inputs
from .plan import META_FACTOR, Plan, expand, groups, parameter_counts
from .spec import load_spec

log = logging.getLogger("negint_ds")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launchers/experiment.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, help="a built-in spec name (negint_ds/experiments/specs) or a YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set seeds=[0,1] --set 'set=[train.max_steps=200]'")
    p.add_argument("--out_dir", default=None, help="default: runs/experiments/<spec name> (under the current directory)")
    p.add_argument("--dry_run", action="store_true", help="list the runs, their state and estimated cost; write nothing")
    p.add_argument("--emit_slurm", action="store_true", help="write <out>/cluster/ (commands, SLURM array) and stop")
    p.add_argument("--report_only", action="store_true", help="assemble the report from finished outputs; run nothing")
    p.add_argument("--only", nargs="+", metavar="RUN", default=None, help="run only these run ids")
    p.add_argument("--launcher", default=None,
                   help="prefix for the distributed stages, e.g. 'deepspeed --num_gpus 8' (default: one python process)")
    p.add_argument("--world_size", type=int, default=1, help="processes per run, for the dry run's batch and estimate")
    p.add_argument("--flops_per_s", type=float, default=None,
                   help="the dry run's machine speed (default: calibrated on the 2-core CPU machine's Quickstart)")
    p.add_argument("--no_progress", action="store_true")
    return p


def _fmt_s(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


def dry_run_text(plan: Plan) -> str:
    """The runs with each stage's state and the estimated time left (nothing is written)."""
    status = load_status(plan)
    lines = [f"experiment {plan.spec.name}: {len(plan.runs)} runs, {len(plan.prepare)} data directories "
             f"(out: {plan.out_dir})", "", f"{'run':34} {'languages':28} stages (state)  estimate left"]
    total = 0.0
    for run in plan.runs:
        parts, left = [], 0.0
        for s in run.stages:
            st = stage_state(s)
            if status.get(run.id, {}).get(s.name, {}).get("state") == "failed" and st != "done":
                st = "failed"
            parts.append(f"{s.name}:{st}")
            if st != "done":
                left += s.estimate_s * (0.5 if st == "partial" else 1.0)
        total += left
        lines.append(f"{run.id:34} {'+'.join(run.langs):28} {' '.join(parts)}  {_fmt_s(left)}")
    todo_data = [d for d in plan.prepare if not os.path.isfile(os.path.join(d, "manifest.json"))]
    total += 60.0 * len(todo_data)
    lines += ["", f"data directories to prepare: {len(todo_data)} of {len(plan.prepare)}",
              f"estimated time left: {_fmt_s(total)} (rough: training FLOPs at the calibrated speed, meta steps "
              f"{META_FACTOR['finite_difference']}× a plain step; --flops_per_s for another machine)"]
    if plan.spec.scaling is not None:
        lines += ["", "language-specific φ per rank (fp32 weights + grad + AdamW moments; no ZeRO stage partitions φ):"]
        seen = set()
        for run in plan.runs:
            if run.row in ("+adpt", "+meta adpt") and len(run.langs) not in seen:
                seen.add(len(run.langs))
                c = parameter_counts(run.recipe)
                lines.append(f"  {len(run.langs):3d} languages: φ {c['phi_per_lang']:,} per language, "
                             f"{c['phi_bytes_total'] / 2 ** 20:.2f} MiB in all (θ {c['theta']:,})")
    return "\n".join(lines)


def _group_figures(plan: Plan) -> None:
    """Fig. 3 across the JointPair runs that carry the probe, Fig. 4c per group (subprocesses; failures logged)."""
    from .execute import _spawn, log_path

    figs = os.path.join(plan.out_dir, "figures")
    gc = [r.run_dir for r in plan.runs if r.kind == "grid" and r.row == "JointPair"
          and os.path.isfile(os.path.join(r.run_dir, "analysis", "grad_conflict.csv"))]
    jobs = []
    if gc:
        jobs.append(("report-grad_conflict", ["grad_conflict_plot", "--runs", *gc, "--out_dir", figs]))
    if plan.spec.analyses.warmup_loss:
        for g, _ in groups(plan.spec):
            runs = [r.run_dir for r in plan.runs if r.kind == "grid" and r.group == g and r.seed == plan.spec.seeds[0]
                    and os.path.isfile(os.path.join(r.run_dir, "final_ppl.json"))]
            if runs:
                jobs.append((f"report-warmup_{g}", ["warmup_loss", "--runs", *runs, "--out_dir",
                                                   os.path.join(figs, f"warmup_{g}")]))
    for name, args in jobs:
        lf = log_path(plan, None, name)
        rc, _, _ = _spawn([sys.executable, "launchers/analyze.py", *args], lf)
        if rc != 0:
            log.warning("%s failed (exit %d): %s", name, rc, lf)
    for g, _ in groups(plan.spec):  # Fig. 4c lands in a per-group directory: link its figure into figures/
        src = os.path.join(figs, f"warmup_{g}", "warmup_loss.png")
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(figs, f"warmup_loss_{g}.png"))


def run(a) -> int:
    from .report import build_report

    spec, path = load_spec(a.spec, a.overrides)
    out_dir = a.out_dir or os.path.join("runs", "experiments", spec.name)
    plan = expand(spec, path, out_dir, world=a.world_size, rate=a.flops_per_s)
    if a.only:
        unknown = [r for r in a.only if r not in {x.id for x in plan.runs}]
        if unknown:
            raise ExperimentError(f"--only: no such run {unknown}; runs: {[x.id for x in plan.runs]}")
    if a.dry_run:
        print(dry_run_text(plan))
        return 0
    write_inputs(plan)
    if a.emit_slurm:
        from .cluster import write_cluster

        files = write_cluster(plan, a.spec if not os.path.isfile(a.spec) else os.path.abspath(a.spec))
        print(f"wrote {len(files)} files under {os.path.join(plan.out_dir, 'cluster')}; submit with "
              f"bash {os.path.join(plan.out_dir, 'cluster', 'submit.sh')}")
        return 0
    failed = 0
    if not a.report_only:
        launcher = shlex.split(a.launcher) if a.launcher else None
        ex = Executor(plan, launcher, progress=not a.no_progress)
        try:
            failed = ex.run(set(a.only) if a.only else None)
        except KeyboardInterrupt:
            print(f"interrupted; run the same command again to continue ({plan.out_dir})", file=sys.stderr)
            return 130
    _group_figures(plan)
    status = load_status(plan)
    build_report(plan, status)
    if spec.scaling is None and os.path.isfile(os.path.join(plan.out_dir, "findings.md")):
        with open(os.path.join(plan.out_dir, "findings.md"), encoding="utf-8") as f:
            table = [l for l in f.read().splitlines() if l.startswith("| F")]
        print("\n".join(table))
    print(f"report: {os.path.join(plan.out_dir, 'report.md')}" + (f"; {failed} run(s) failed (see the report)"
                                                                  if failed else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    a = _parser().parse_args(argv)
    try:
        return run(a)
    except (ConfigError, ExperimentError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


__all__ = ["dry_run_text", "main", "run"]
