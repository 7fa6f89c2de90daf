#!/usr/bin/env bash
# The README's "Analyses" results at demo size on the built-in Bible corpus (CPU, about 40 minutes on 2 cores):
# Fig. 3 for ar-en and fr-en JointPair models (probe on during pretraining, en-en/ar-ar/fr-fr controls), Fig. 4a/4b
# for the ar-en model, Fig. 4c and bits per character for both. Outputs under runs/ and benchmarks/analyses/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/analyses
mkdir -p "$OUT"
for lg in ar fr; do
  python -m negint_ds.prepare --config jointpair_en_${lg}_demo
  [ -f runs/jointpair_en_${lg}_demo/export/model.safetensors ] || \
    deepspeed launchers/pretrain.py --deepspeed_config ds_configs/cpu_zero2.json --config jointpair_en_${lg}_demo \
      --run_dir runs/jointpair_en_${lg}_demo --no_progress
done
python launchers/analyze.py grad_conflict_plot --runs runs/jointpair_en_ar_demo runs/jointpair_en_fr_demo --out_dir "$OUT"
deepspeed launchers/analyze.py masks --deepspeed_config ds_configs/cpu_zero2.json --run_dir runs/jointpair_en_ar_demo \
  --langs ar en --seeds 0 1 --set steps=300 --no_progress
python launchers/analyze.py mask_report --run_dir runs/jointpair_en_ar_demo --pairs ar-en --out_dir "$OUT"
python launchers/analyze.py warmup_loss --runs runs/jointpair_en_ar_demo runs/jointpair_en_fr_demo --out_dir "$OUT"
python launchers/analyze.py bpc --runs runs/jointpair_en_ar_demo runs/jointpair_en_fr_demo --max_sentences 200 \
  --out_dir "$OUT"
