#!/bin/bash
# Session 8 (2026-12-07): FP8 attention with the queries made in e4m3 by the norm+RoPE island, on one H100
# (device tool, nvidia-h100-x1), every baseline re-run in the same call. Needs the nvidia-cudnn-frontend 1.32.0
# wheel (cp312 manylinux) in .whl (carry it).
#   bash bench/gpu_session_s8.sh a   # fp8 GPU tests; profile of one P1 attention call (bf16, fp8, fp8 with e4m3
#                                    # queries); P1 bf16 vs fp8 (e4m3 queries) vs fp8 (bf16 queries); 4.5B error
#   bash bench/gpu_session_s7.sh y   # then: P2 bf16 vs fp8 (+ deviation), P7 bf16 vs fp8
#   bash bench/gpu_session_s7.sh z   # then: P4b under a 22 GiB cap, 24B error
# Each step prints its wall time; results are JSON lines in $OUT/s8<part>.jsonl.
source bench/gpu_env.sh s8 "$1"
date -u
if [ "$1" = a ]; then
  step "timeout 150 python3 -m pytest -m gpu -q -s -p no:cacheprovider tests/test_attention_fp8.py | grep -E 'rel L2|passed|failed|Error'" 12
  step "timeout 60 python3 bench/fp8_attention.py profile --size 4.5B --json $J | grep -v '^{'" 45
  step "timeout 70 $W --mode cached --compile --backend cudnn --json $J"
  step "timeout 80 $W --mode cached --compile --backend fp8-approx --json $J"
  step "timeout 80 $W --mode cached --compile --backend fp8-approx --bf16-queries --json $J"
  step "timeout 90 python3 bench/fp8_attention.py dit --size 4.5B --json $J"
fi
echo done
