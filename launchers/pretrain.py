"""Pretrain an XLM-style multilingual masked LM on DeepSpeed.

    deepspeed launchers/pretrain.py --deepspeed_config ds_configs/cpu_zero2.json \
        --config jointpair_en_sw_demo --run_dir runs/demo

Also runs under ``mpirun -n N python launchers/pretrain.py ...`` (DeepSpeed's mpi4py discovery) and as
one plain ``python`` process. ``--help`` lists the options.
"""
import sys

from negint_ds.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
