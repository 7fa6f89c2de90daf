"""Downstream evaluation of a pretrained run: fine-tuning grids and zero-shot cross-lingual transfer.

    deepspeed launchers/finetune.py --deepspeed_config ds_configs/cpu_zero2.json \
        --pretrained runs/jointpair_en_sw_demo --task builtin          # built-in tasks: within + zero-shot tables
    deepspeed launchers/finetune.py --deepspeed_config ds_configs/gpu_bf16_zero2.json \
        --pretrained runs/jointpair_en_sw --task ner --set setting=zero_shot \
        --set data_format=bio --set 'data_files={en.train: en/train, en.dev: en/dev, sw.test: sw/test}'

Also runs as one process (``python launchers/finetune.py ...``) or under ``mpiexec -n N``. See
``negint_ds/tasks/cli.py`` and README "Downstream evaluation".
"""
import sys

from negint_ds.tasks.cli import main

if __name__ == "__main__":
    sys.exit(main())
