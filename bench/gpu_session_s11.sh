#!/bin/bash
# Session 11 (2026-12-07): the measurements session 10 could not make (device time went to failed starts).
# One H100 (device tool). Needs the nvidia-cudnn-frontend 1.32.0 wheel (cp312 manylinux) in .whl (carry it).
#   bash bench/gpu_session_s11.sh a   # GPU tests of the fusions (new fp8 bound); fusion deviation; P2 FP8 / bf16 with ideal
#   bash bench/gpu_session_s11.sh b   # P6 windows; P7 FP8; profiled P2 FP8
#   bash bench/gpu_session_s11.sh f   # profiled P2 FP8
#   bash bench/gpu_session_s11.sh d   # P5 FP8 (24B 720x1280) on an H100; the fp8 fused-layers GPU test; repeat-run determinism
# Each step prints its wall time; results are JSON lines in $OUT/s11<part>.jsonl.
source bench/gpu_env.sh s11 "$1"
date -u
if [ "$1" = a ]; then
  step "timeout 150 python3 -m pytest -m gpu -q -s -p no:cacheprovider tests/test_gpu_dit.py -k 'compile_ops_matches or fused' | grep -E 'rel L2|fused|passed|failed|Error|assert'" 14
  step "timeout 90 python3 bench/fusion_deviation.py --backend cudnn --json $J | grep -v '^{'" 8
  step "timeout 130 $G --backend fp8-approx --ideal --json $J | grep -E 'ideal|^{' | cut -c1-700" 2
  step "timeout 130 $G --backend cudnn --ideal --json $J | grep -E 'ideal|^{' | cut -c1-700" 2
elif [ "$1" = b ]; then
  step "timeout 70 $W --mode extra --compile --backend cudnn --iters 2 --json $J | cut -c1-300"
  step "timeout 80 $W --variant distill-fp8 --mode extra --compile --backend fp8-approx --iters 2 --json $J | cut -c1-300"
  step "timeout 110 $G --backend fp8-approx --early-first-chunk --json $J | cut -c1-600"
  step "timeout 120 $G --backend fp8-approx --profile --json $J | grep -E 'profile:'" 12
elif [ "$1" = f ]; then
  step "timeout 120 $G --backend fp8-approx --profile --json $J | grep -E 'profile:'" 12
elif [ "$1" = d ]; then  # P5 first: it is the one that was never run on an H100
  step "timeout 450 $G24 --height 720 --width 1280 --compile --warmup --backend fp8-approx --json $J" 2
  step "timeout 80 python3 -m pytest -m gpu -q -s -p no:cacheprovider tests/test_gpu_dit.py -k 'fp8_layers_fused' | grep -E 'float64|passed|failed|Error|assert'" 6
  step "timeout 75 python3 bench/fusion_deviation.py --backend cudnn --json $J | grep -E 'again'" 3
fi
echo done
