#!/bin/bash
# Session 13 (2026-12-08 UTC): P5 with the checkpoint's own bf16 weights (weight_dtype 'auto', what a user's 24B
# distill run loads) instead of fp8 weight storage, and its ideal measured in the same call.
# One H100 (device tool). Needs the nvidia-cudnn-frontend 1.32.0 wheel (cp312 manylinux) in .whl (carry it).
#   bash bench/gpu_session_s13.sh a   # P5 FP8 attention, bf16 weights, with ideal
#   bash bench/gpu_session_s13.sh b   # P5 FP8 attention, fp8 weight storage (session 12's run), with ideal
# Each step prints its wall time; results are JSON lines in $OUT/s13<part>.jsonl.
source bench/gpu_env.sh s13 "$1"
date -u
P5="python3 bench/generate.py --size 24B --variant distill --steps 16 --height 720 --width 1280 --compile --warmup --backend fp8-approx --ideal"
if [ "$1" = a ]; then
  step "timeout 540 $P5 --json $J | grep -E 'ideal|^{|Error|memory' | cut -c1-900" 4
elif [ "$1" = b ]; then
  step "timeout 540 $P5 --weight-fp8 --json $J | grep -E 'ideal|^{|Error|memory' | cut -c1-900" 4
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo done
