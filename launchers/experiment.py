"""Run an experiment spec end to end: the paper's tables, scaling studies, findings.

    python launchers/experiment.py --spec paper_demo [--dry_run | --emit_slurm | --report_only]

See ``negint_ds/experiments/cli.py`` and README "Experiments".
"""
import sys

from negint_ds.experiments.cli import main

if __name__ == "__main__":
    sys.exit(main())
