"""The grid for an existing scheduler: one DeepSpeed command per stage and a SLURM job array (one task per run).

``<out>/cluster/`` gets:

* ``commands.sh`` — every stage of every run as the DeepSpeed command that runs it (for any scheduler, or by hand);
* ``prepare.sbatch`` — an array over the data directories (CPU work, run once each);
* ``runs.sbatch`` — an array over the runs: task *i* runs ``runs/<run i>.sh`` on ``cluster.nodes`` nodes; each
  node's ``srun`` task starts DeepSpeed in its no-ssh mode (``--node_rank $SLURM_NODEID``, a hostfile of the
  allocation), the multi-node path of README "Multi-node";
* ``runs/<run>.sh`` — the run's stages, each skipped when its outputs exist and continued with ``--resume`` when
  interrupted (the same files the local executor checks);
* ``report.sbatch`` and ``submit.sh`` — the report after the array (``afterany``: failed runs are reported as failed).
"""
from __future__ import annotations

import os
import shlex
import stat

from ..atomic import atomic_write_text
from .execute import REPO
from .plan import Plan, Stage


def _q(args: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)


def _swap_ds(stage: Stage, ds_file: str) -> list[str]:
    args = list(stage.args)
    for i, a in enumerate(args[:-1]):
        if a == "--deepspeed_config":
            args[i + 1] = ds_file
    return args


def _stage_lines(stage: Stage, ds_file: str, launch: str) -> list[str]:
    script = stage.script.split() if stage.script.startswith("-m ") else [stage.script]
    cmd = f"{launch if stage.distributed else 'python'} {_q(script + _swap_ds(stage, ds_file))}"
    done = " && ".join(f"[ -e {shlex.quote(p)} ]" for p in stage.done) or "false"
    # one process stages run on the first node only (every node runs the script under a multi-node srun)
    node = "" if stage.distributed else ' && [ "${SLURM_NODEID:-0}" = 0 ]'
    lines = [f"# {stage.name}", f"if ! {{ {done}; }}{node}; then"]
    if stage.resume_if:
        lines += [f"  R=; [ -e {shlex.quote(stage.resume_if)} ] && R=--resume", f"  {cmd} $R"]
    else:
        lines.append(f"  {cmd}")
    return lines + ["fi"]


def write_cluster(plan: Plan, spec_arg: str) -> list[str]:
    """Write ``<out>/cluster/`` (see the module docstring); returns the files written."""
    c = plan.spec.cluster
    ds_file = os.path.abspath(os.path.join(REPO, c.ds_config)) if not os.path.isabs(c.ds_config) else c.ds_config
    root = os.path.join(plan.out_dir, "cluster")
    os.makedirs(os.path.join(root, "runs"), exist_ok=True)
    written = []

    def put(name: str, text: str, exe: bool = False) -> None:
        path = os.path.join(root, name)
        atomic_write_text(path, text)
        if exe:
            os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP)
        written.append(path)

    header = "#!/usr/bin/env bash\nset -euo pipefail\ncd " + shlex.quote(REPO) + "\n"
    ds_launch = (f"deepspeed --num_gpus {c.gpus_per_node}" if c.nodes == 1 else
                 "deepspeed --hostfile \"$HOSTFILE\" --num_nodes \"$SLURM_NNODES\" --node_rank \"$SLURM_NODEID\" "
                 f"--master_addr \"$HEAD\" --master_port {c.master_port} --no_ssh")
    cmds = [header, f"# {plan.spec.name}: every stage as one command (single node: {ds_launch})."]
    for data_dir, recipe in plan.prepare.items():
        cmds.append(f"python -m negint_ds.prepare --config {shlex.quote(recipe)} --no-progress")
    for run in plan.runs:
        cmds.append(f"\n# run {run.id} ({run.row}, {'+'.join(run.langs)}, seed {run.seed})")
        for s in run.stages:
            cmds += _stage_lines(s, ds_file, ds_launch if c.nodes == 1 else "$LAUNCH")
        put(os.path.join("runs", f"{run.id}.sh"),
            header + f"# {run.id}: {run.row}, languages {'+'.join(run.langs)}, seed {run.seed}\n"
            f"LAUNCH=\"${{LAUNCH:-deepspeed --num_gpus {c.gpus_per_node}}}\"\n"
            + "\n".join(line for s in run.stages for line in _stage_lines(s, ds_file, "$LAUNCH")) + "\n", exe=True)
    put("commands.sh", "\n".join(cmds) + "\n", exe=True)
    put("runs.txt", "\n".join(r.id for r in plan.runs) + "\n")
    put("data.txt", "\n".join(plan.prepare.values()) + "\n")
    part = f"#SBATCH --partition={c.partition}\n" if c.partition else ""
    logs = os.path.join(plan.out_dir, "logs")
    put("prepare.sbatch", f"#!/usr/bin/env bash\n#SBATCH --job-name={plan.spec.name}-prepare\n"
        f"#SBATCH --array=0-{len(plan.prepare) - 1}\n#SBATCH --nodes=1\n#SBATCH --ntasks=1\n#SBATCH --cpus-per-task=8\n"
        f"#SBATCH --time=04:00:00\n{part}#SBATCH --output={logs}/slurm-prepare-%a.log\n"
        f"set -euo pipefail\ncd {shlex.quote(REPO)}\n"
        f"RECIPE=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" {shlex.quote(os.path.join(root, 'data.txt'))})\n"
        "python -m negint_ds.prepare --config \"$RECIPE\" --no-progress\n")
    multi = ("HOSTFILE=$(mktemp -p \"${SLURM_SUBMIT_DIR:-$PWD}\")\n"  # on the shared filesystem: every node reads it
             f"scontrol show hostnames \"$SLURM_JOB_NODELIST\" | sed 's/$/ slots={c.gpus_per_node}/' > \"$HOSTFILE\"\n"
             "HEAD=$(head -n1 \"$HOSTFILE\" | cut -d' ' -f1)\nexport HOSTFILE HEAD\n"
             # one srun task per node runs the run's script; DeepSpeed's no-ssh mode starts that node's ranks
             "srun --ntasks-per-node=1 --export=ALL bash -c 'LAUNCH=\"deepspeed --hostfile $HOSTFILE "
             f"--num_nodes $SLURM_NNODES --node_rank $SLURM_NODEID --master_addr $HEAD --master_port {c.master_port} "
             "--no_ssh\" exec bash \"$0\"' \"$SCRIPT\"\n") if c.nodes > 1 else \
        f"LAUNCH=\"deepspeed --num_gpus {c.gpus_per_node}\" bash \"$SCRIPT\"\n"
    put("runs.sbatch", f"#!/usr/bin/env bash\n#SBATCH --job-name={plan.spec.name}\n"
        f"#SBATCH --array=0-{len(plan.runs) - 1}\n#SBATCH --nodes={c.nodes}\n#SBATCH --ntasks-per-node=1\n"
        f"#SBATCH --gpus-per-node={c.gpus_per_node}\n#SBATCH --time={c.time}\n{part}"
        f"#SBATCH --output={logs}/slurm-run-%a.log\nset -euo pipefail\ncd {shlex.quote(REPO)}\n"
        f"RUN=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" {shlex.quote(os.path.join(root, 'runs.txt'))})\n"
        f"SCRIPT={shlex.quote(os.path.join(root, 'runs'))}/$RUN.sh\n" + multi)
    put("report.sbatch", f"#!/usr/bin/env bash\n#SBATCH --job-name={plan.spec.name}-report\n#SBATCH --nodes=1\n"
        f"#SBATCH --ntasks=1\n#SBATCH --time=01:00:00\n{part}#SBATCH --output={logs}/slurm-report.log\n"
        f"cd {shlex.quote(REPO)}\npython launchers/experiment.py --spec {shlex.quote(spec_arg)} "
        f"--out_dir {shlex.quote(plan.out_dir)} --report_only\n")
    put("submit.sh", "#!/usr/bin/env bash\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\n"
        "P=$(sbatch --parsable prepare.sbatch)\nR=$(sbatch --parsable --dependency=afterok:$P runs.sbatch)\n"
        "sbatch --dependency=afterany:$R report.sbatch\necho \"prepare $P, runs $R (array), report after\"\n", exe=True)
    return written


__all__ = ["write_cluster"]
