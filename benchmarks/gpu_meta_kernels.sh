#!/usr/bin/env bash
# Issues 3 and 4 GPU checks (one call of the device tool, ~8 minutes): the kernel tests natively on the GPU
# (fp32, fp16, bf16), the kernel benchmarks with roofline ratios, one meta step vs one plain step (time and
# peak memory; finite differences and exact), and paper-configuration tokens/s of +adpt and +meta adpt with
# the fused kernels on (NEGINT_DS_KERNELS=auto) and off (=torch). Needs .whl (shared/device/make_wheels.sh,
# plus pytest if the image lacks it) and data/bible_en_sw_32k carried; writes to $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/.site:$PWD PATH=$PWD/.site/bin:$PATH TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/gpu_meta_kernels.log") 2>&1
date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
echo "== kernel tests on the GPU"
timeout 300 python3 -m pytest -q tests/test_kernels.py tests/test_fd_hvp_kernels.py tests/test_gemm_chain.py 2>&1 | tail -5
echo "== kernel benchmarks (max-autotune tunes every shape: it gets its own, longer budget)"
timeout 300 python3 kernels/bench/bench_adapter.py --dtype bf16 --providers triton,eager,compile,gemm-chain --json "$OUT/bench_adapter.json" | tee "$OUT/bench_adapter.txt" | tail -20
timeout 420 python3 kernels/bench/bench_adapter.py --dtype bf16 --providers triton,max-autotune --json "$OUT/bench_adapter_autotune.json" | tail -12
timeout 120 python3 kernels/bench/bench_fd_hvp.py --json "$OUT/bench_fd_hvp.json" | tee "$OUT/bench_fd_hvp.txt" | tail -12
echo "== meta step vs plain step (paper configuration, bf16, ZeRO-1, batch 128 x 256)"
timeout 450 python3 benchmarks/meta_step.py --recipe jointpair_en_sw_meta_adpt --deepspeed_config ds_configs/gpu_bf16_zero1.json --modes plain,fd,fd_working,fd_forward,exact,exact_working --steps 10 --warmup 3 | tee "$OUT/meta_step.txt" | tail -8
echo "== end-to-end tokens/s, kernels on and off"
for kern in auto torch; do
  for r in jointpair_en_sw_adpt jointpair_en_sw_meta_adpt; do
    NEGINT_DS_KERNELS=$kern timeout 200 deepspeed --num_gpus 1 launchers/pretrain.py --deepspeed_config ds_configs/gpu_bf16_zero1.json --config $r --run_dir /tmp/runs/${r}_$kern --no_progress --set train.max_steps=100 --set train.log_every=20 --set train.eval_every=100 --set train.save_every=100 --set train.eval_sequences=64 > /tmp/${r}_$kern.log 2>&1
    echo "$r kernels=$kern $(python3 benchmarks/summarize.py /tmp/runs/${r}_$kern/metrics.jsonl --skip 1)" | tee -a "$OUT/e2e_kernels.txt"
  done
done
date -u
