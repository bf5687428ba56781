#!/bin/bash
# Session 10 (2026-12-07): fused pre-norms (made by the previous gated residual), the compiled cross-attention query
# norm, GELU in fc1's GEMM epilogue (`fast`), fp8 layers' input quantizations fused into the kernels that make
# their inputs, planar fp8 linear_proj; --unfused is the same-call baseline without them. One H100 (device tool).
# Needs the nvidia-cudnn-frontend 1.32.0 wheel (cp312 manylinux) in .whl (carry it).
#   bash bench/gpu_session_s10.sh a   # islands; VAE decode tiles per call; GPU tests; P1 bf16 / FP8, fused vs unfused (+ deviation)
#   bash bench/gpu_session_s10.sh b   # P6 windows fused (bf16 and fp8 weights + FP8 attention), fp8 unfused; profile
#   bash bench/gpu_session_s10.sh c   # P2 FP8 and bf16 with the DiT's ideal; P7 FP8; P2 FP8 with one tile per VAE call
#   bash bench/gpu_session_s10.sh d   # P5 FP8 (24B 720x1280) on an H100
#   bash bench/gpu_session_s10.sh e   # P6 windows only (fused); f: a profiled P2 FP8 run
#   bash bench/gpu_session_s10.sh one # the most of a, b in one call (device time was short)
# Each step prints its wall time; results are JSON lines in $OUT/s10<part>.jsonl.
source bench/gpu_env.sh s10 "$1"
date -u
if [ "$1" = a ]; then
  step "timeout 100 python3 bench/islands.py --json $J | grep -v '^{'" 14
  step "timeout 90 python3 bench/vae_decode.py --batches 1,4,16 --json $J | grep -v '^{'" 3
  step "timeout 200 python3 -m pytest -m gpu -q -s -p no:cacheprovider tests/test_gpu_dit.py tests/test_attention_fp8.py | grep -E 'rel L2|passed|failed|Error'" 12
  step "timeout 75 $W --mode cached --compile --backend cudnn --deviation --json $J | grep -E 'velocity|^{' | cut -c1-400" 2
  step "timeout 75 $W --mode cached --compile --backend cudnn --unfused --json $J | cut -c1-300"
  step "timeout 80 $W --mode cached --compile --backend fp8-approx --json $J | cut -c1-300"
  step "timeout 80 $W --mode cached --compile --backend fp8-approx --unfused --json $J | cut -c1-300"
elif [ "$1" = one ]; then  # the most in one call: GPU tests, P1 fused/unfused (bf16, FP8), islands, P6 fused, VAE tiles
  step "timeout 150 python3 -m pytest -m gpu -q -s -p no:cacheprovider tests/test_gpu_dit.py tests/test_attention_fp8.py -k 'compile or fused or fp8 or float64' | grep -E 'rel L2|fused|passed|failed|Error'" 10
  step "timeout 70 $W --mode cached --compile --backend cudnn --deviation --iters 2 --json $J | grep -E 'velocity|^{' | cut -c1-400" 2
  step "timeout 60 $W --mode cached --compile --backend cudnn --unfused --iters 2 --json $J | cut -c1-300"
  step "timeout 70 $W --mode cached --compile --backend fp8-approx --iters 2 --json $J | cut -c1-300"
  step "timeout 70 $W --mode cached --compile --backend fp8-approx --unfused --iters 2 --json $J | cut -c1-300"
  step "timeout 60 python3 bench/islands.py --json $J | grep -v '^{'" 14
  step "timeout 70 $W --variant distill-fp8 --mode extra --compile --backend fp8-approx --iters 2 --json $J | cut -c1-300"
  step "timeout 60 $W --mode extra --compile --backend cudnn --iters 2 --json $J | cut -c1-300"
  step "timeout 60 python3 bench/vae_decode.py --batches 1,16 --iters 2 --json $J | grep -v '^{'" 2
elif [ "$1" = b ]; then
  step "timeout 75 $W --mode extra --compile --backend cudnn --json $J | cut -c1-300"
  step "timeout 90 $W --variant distill-fp8 --mode extra --compile --backend fp8-approx --deviation --json $J | grep -E 'velocity|^{' | cut -c1-300" 2
  step "timeout 90 $W --variant distill-fp8 --mode extra --compile --backend fp8-approx --unfused --json $J | cut -c1-300"
  step "timeout 75 $W --mode extra --compile --backend cudnn --unfused --json $J | cut -c1-300"
  step "timeout 100 python3 bench/profile_forward.py --size 4.5B --compile --backend cudnn --json $J | grep -v '^{'" 16
elif [ "$1" = c ]; then
  step "timeout 130 $G --backend fp8-approx --ideal --json $J | grep -E 'ideal|^{' | cut -c1-700" 2
  step "timeout 130 $G --backend cudnn --ideal --json $J | grep -E 'ideal|^{' | cut -c1-700" 2
  step "timeout 110 $G --backend fp8-approx --early-first-chunk --json $J | cut -c1-600"
  step "timeout 110 $G --backend fp8-approx --tile-batch 1 --json $J | cut -c1-600"
elif [ "$1" = e ]; then  # P6 windows only
  step "timeout 75 $W --mode extra --compile --backend cudnn --json $J | cut -c1-300"
  step "timeout 90 $W --variant distill-fp8 --mode extra --compile --backend fp8-approx --deviation --json $J | grep -E 'velocity|^{' | cut -c1-300" 2
elif [ "$1" = f ]; then  # a profiled P2 FP8 run
  step "timeout 120 $G --backend fp8-approx --profile --json $J | grep -E 'profile:'"
elif [ "$1" = d ]; then
  step "timeout 560 $G24 --height 720 --width 1280 --compile --warmup --backend fp8-approx --json $J" 2
fi
echo done
