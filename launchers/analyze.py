"""Analyses of interference on pretrained run directories (Wang et al. 2020, Figures 3 and 4).

    python launchers/analyze.py grad_conflict --run_dir runs/demo            # Fig. 3 over saved checkpoints
    deepspeed launchers/analyze.py masks --deepspeed_config ds_configs/cpu_zero2.json \
        --run_dir runs/demo --langs sw en --seeds 0 1                        # per-language Hard Concrete masks
    python launchers/analyze.py mask_report --run_dir runs/demo --pairs sw-en   # Fig. 4a/4b
    python launchers/analyze.py warmup_loss --runs runs/a runs/b --out_dir analysis_out   # Fig. 4c
    python launchers/analyze.py bpc --runs runs/mono_sw runs/demo --langs sw --out_dir analysis_out

``grad_conflict`` and ``masks`` also run with N processes under ``deepspeed --num_gpus N`` or ``mpiexec -n N``.
The probe during pretraining is the recipe's ``analysis.grad_conflict`` section. ``--help`` on each command.
"""
import sys

from negint_ds.analysis.cli import main

if __name__ == "__main__":
    sys.exit(main())
