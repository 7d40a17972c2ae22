#!/usr/bin/env bash
# The speed issue's GPU checks in one run, for a lent GPU machine. Results go to $OUT (default out/gpu_checks), 5
# small files, since the device tool brings back 8 at most: log.txt, bench.json, performance_gpu.md, gen_vs_hf.json
# and runs.json (every MLflow run's stage, status, duration and last metrics); checkpoints, the MLflow store and the
# run folders stay in $WORK (default out/gpu_work).
#   1. lit-llm bench on CUDA in bf16 (matmul peak, training tokens/s and MFU of tiny, small and gpt2-124m, eager
#      and with compiled blocks, KV-cache generation, DPO/PPO steps)            -> bench.json, performance_gpu.md
#   2. our generation against transformers' generate on the GPU, eager and with the compiled decode step
#                                                       -> gen_vs_hf.json
#   3. a 1-GPU FSDP run of the tiny recipe: a sharded checkpoint at step 100, then resumed from it to step 150, and
#      20 FSDP steps of DPO from it (each block runs twice per forward: the prompts, then the responses)
#                                                       -> $WORK/fsdp, runs.json
#   4. the tinystories_hh recipe's configs (pretrain, SFT, reward, DPO at their GPU sizes) for $STEPS steps each,
#      on the task world as stand-in data (no hub access assumed)   -> $WORK/tinystories_hh, runs.json
# Every command's output is in $OUT/log.txt; the script stops at the first failure.
#
# The lent machines reach no package registry: `bash scripts/gpu_wheels.sh` here first puts the missing
# dependencies' wheels in .whl/, the device call carries it (carry=[".whl"]), and this script installs them
# (into /tmp/site) and lit_llm itself (no dependencies checked) before the checks.
#
#   bash scripts/gpu_checks.sh                      # on the GPU machine (STEPS=100 for a shorter step 4)
#   DEADLINE=520 bash scripts/gpu_checks.sh         # stop (as Ctrl-C) whatever runs 520 s after the start and skip
#                                                   # the rest, so the summary is written inside the device tool's
#                                                   # 600 s per command
#   DEVICE=cpu QUICK=1 bash scripts/gpu_checks.sh   # a dry run of the same commands on a CPU (FSDP skipped: Lightning
#                                                   # refuses it on a CPU), to check them before spending GPU time
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_checks}
WORK=${WORK:-out/gpu_work}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-300}
QUICK=${QUICK:-0}
DEADLINE=${DEADLINE:-0}  # seconds after the start; 0: none
mkdir -p "$OUT" "$WORK"
WORK=$(cd "$WORK" && pwd)
exec > >(tee -a "$OUT/log.txt") 2>&1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
  python3 -c "import lit_llm.cli, torch; print('lit_llm ready; torch', torch.__version__, 'cuda', torch.cuda.is_available())"
fi
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db"
trap 'python3 scripts/mlflow_summary.py gpu-checks > "$OUT/runs.json" || true' EXIT
if [ "$DEVICE" = cuda ]; then
  nvidia-smi || true
  accelerator=gpu; precision=bf16-mixed
else
  accelerator=cpu; precision=32-true
fi
step() { echo; echo "=== $1 ($(date -u +%H:%M:%S), ${SECONDS} s in)"; }
past_deadline() { [ "$DEADLINE" != 0 ] && [ $((DEADLINE - SECONDS)) -lt 20 ]; }
# `python3 -m lit_llm` (= lit-llm): the python that holds torch there, whether or not its scripts are on PATH.
within() {  # "$@", interrupted like Ctrl-C at the deadline, skipped once it is near
  if [ "$DEADLINE" = 0 ]; then "$@"; return; fi
  if past_deadline; then echo "skipped at the deadline: $*" | cut -c1-120; return 0; fi
  local rc=0
  timeout --signal=INT --kill-after=20 $((DEADLINE - SECONDS)) "$@" || rc=$?
  if [ "$rc" = 124 ]; then echo "stopped at the deadline: $*" | cut -c1-120; return 0; fi
  return "$rc"
}

step "1. lit-llm bench ($DEVICE)"
if [ "$QUICK" = 1 ]; then
  within python3 -m lit_llm bench --device "$DEVICE" --quick --out "$OUT/bench.json" --report "$OUT/performance_gpu.md"
else
  within python3 -m lit_llm bench --device "$DEVICE" --dtype bfloat16 --sizes tiny,small,gpt2-124m --compile --out "$OUT/bench.json" \
    --report "$OUT/performance_gpu.md"
fi

step "2. generation against transformers ($DEVICE)"
rounds=$([ "$QUICK" = 1 ] && echo 1 || echo 5)
new_tokens=$([ "$QUICK" = 1 ] && echo 8 || echo 128)
within python3 benchmarks/generation_vs_transformers.py --device "$DEVICE" --rounds "$rounds" --new-tokens "$new_tokens" \
  --compile --out "$OUT/gen_vs_hf.json"

step "3. FSDP on one GPU: sharded checkpoint at step 100, resumed to 150"
if [ "$DEVICE" = cuda ]; then
  fsdp=(--config configs/pretrain/tiny.yaml --config configs/strategy/fsdp.yaml --trainer.devices=1
        "--trainer.default_root_dir=$WORK/fsdp" --trainer.logger.init_args.experiment_name=gpu-checks)
  within python3 -m lit_llm fit "${fsdp[@]}" --trainer.max_steps=100
  past_deadline || test -d "$WORK/fsdp/checkpoints/last.ckpt"  # a directory of shards
  within python3 -m lit_llm fit "${fsdp[@]}" --trainer.max_steps=150 --ckpt_path=last
  # DPO runs each decoder block twice per forward (a prompt's pass, then its responses': lit_llm.shared_prefix)
  within python3 -m lit_llm fit --config configs/dpo/tiny.yaml --config configs/strategy/fsdp.yaml --trainer.devices=1 \
    --trainer.max_steps=20 --trainer.val_check_interval=20 "--trainer.default_root_dir=$WORK/fsdp_dpo" \
    --trainer.logger.init_args.experiment_name=gpu-checks --data.init_args.source=tasks \
    "--model.init_args.init_from=$WORK/fsdp/checkpoints/last.ckpt"
else
  echo "skipped on $DEVICE"
fi

steps=$([ "$QUICK" = 1 ] && echo 3 || echo "$STEPS")
step "4. tinystories_hh configs, $steps steps each, task-world stand-in data"
root="$WORK/tinystories_hh"
common=(--trainer.max_steps="$steps" --trainer.val_check_interval="$steps" --trainer.accelerator="$accelerator"
        --trainer.precision="$precision" --trainer.logger.init_args.experiment_name=gpu-checks)
within python3 -m lit_llm fit --config configs/pretrain/tinystories.yaml "${common[@]}" --trainer.default_root_dir="$root/pretrain" \
  --data.init_args.source=tasks --data.init_args.num_workers=0 --data.init_args.val_samples=64
within python3 -m lit_llm fit --config configs/sft/alpaca_52k.yaml "${common[@]}" --trainer.default_root_dir="$root/sft" \
  --model.init_args.init_from="$root/pretrain/checkpoints/last.ckpt" --data.init_args.source=tasks
for stage in reward dpo; do
  within python3 -m lit_llm fit --config "configs/$stage/hh.yaml" "${common[@]}" --trainer.default_root_dir="$root/$stage" \
    --model.init_args.init_from="$root/sft/checkpoints/last.ckpt" --data.init_args.source=tasks
done
step "done: results in $OUT"
