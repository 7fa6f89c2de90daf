#!/usr/bin/env bash
# Issue 2 GPU check (one call of the device tool): the paper configuration (8x512, vocab 32k, seq 256,
# bf16, ZeRO-1, batch 128) through the DeepSpeed launcher on the built-in corpus, beside the same-run
# baselines of benchmarks/pretrain_throughput.py, then short runs of the other GPU DeepSpeed configs.
# Needs .whl (shared/device/make_wheels.sh) and data/bible_en_sw_32k carried; writes to $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/.site:$PWD PATH=$PWD/.site/bin:$PATH TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/gpu.log") 2>&1
date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
python3 -c "import torch, deepspeed, transformers, triton; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"
RUNS=/tmp/runs; mkdir -p $RUNS
STEPS=${STEPS:-300}
common="--config jointpair_en_sw --no_progress --set train.max_steps=$STEPS --set train.log_every=25 --set train.eval_every=$STEPS --set train.save_every=$STEPS --set train.warmup_steps=100 --set train.eval_sequences=128"
echo "== ours, DeepSpeed ZeRO-1 bf16, eager"
timeout 240 deepspeed --num_gpus 1 launchers/pretrain.py --deepspeed_config ds_configs/gpu_bf16_zero1.json --run_dir $RUNS/eager $common
cp $RUNS/eager/metrics.jsonl $OUT/ours_eager.metrics.jsonl
echo "== baselines in the same run"
timeout 120 python3 benchmarks/pretrain_throughput.py --impl hf | tee -a $OUT/bench.jsonl
timeout 120 python3 benchmarks/pretrain_throughput.py --impl ours | tee -a $OUT/bench.jsonl
echo "== ours, DeepSpeed ZeRO-1 bf16, torch.compile"
timeout 300 deepspeed --num_gpus 1 launchers/pretrain.py --deepspeed_config ds_configs/gpu_bf16_zero1.json --run_dir $RUNS/compiled $common --set train.compile=true
cp $RUNS/compiled/metrics.jsonl $OUT/ours_compiled.metrics.jsonl
for f in eager compiled; do echo "$f $(python3 benchmarks/summarize.py $RUNS/$f/metrics.jsonl)"; done | tee $OUT/summary.txt
echo "== other DeepSpeed GPU configs, 50 steps each"
for ds in gpu_bf16_zero2 gpu_bf16_zero3 gpu_fp16_zero2; do
  timeout 150 deepspeed --num_gpus 1 launchers/pretrain.py --deepspeed_config ds_configs/$ds.json --run_dir $RUNS/$ds --config jointpair_en_sw --no_progress --set train.max_steps=50 --set train.log_every=10 --set train.eval_every=50 --set train.save_every=50 --set train.warmup_steps=20 --set train.eval_sequences=64 2>&1 | grep -E "step (10|50)/|valid ppl|Error|error" 
  echo "$ds $(python3 benchmarks/summarize.py $RUNS/$ds/metrics.jsonl --skip 1)" | tee -a $OUT/summary.txt
done
date -u
