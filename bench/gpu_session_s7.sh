#!/bin/bash
# Session 7 (2026-12-07): issue 14's rows on one H100 (device tool, nvidia-h100-x1), every bf16 baseline re-run in
# the same call. Needs the nvidia-cudnn-frontend 1.32.0 wheel (cp312 manylinux) in .whl (carry it).
#   bash bench/gpu_session_s7.sh x   # fp8 GPU tests; kernel rows and a kernel profile (quantization overhead
#                                    # after the one-pass scale change); P1 bf16 vs fp8; P6 windows; per-forward DiT error (4.5B)
#   bash bench/gpu_session_s7.sh y   # P2 bf16 and fp8 (+ deviation of the two generations); P7 bf16 and fp8
#   bash bench/gpu_session_s7.sh w   # one call only (the session's device time was mostly spent on refused starts):
#                                    # kernel rows + profile, P1 bf16 vs fp8, P2 bf16 vs fp8 (+ deviation)
#   bash bench/gpu_session_s7.sh v   # shorter still: kernel rows + profile, P1 bf16 vs fp8
#   bash bench/gpu_session_s7.sh u   # the least: kernel rows + profile
#   bash bench/gpu_session_s7.sh z   # P4b under a 22 GiB cap with decode; per-forward DiT error (24B)
# Each step prints its wall time; results are JSON lines in $OUT/s7<part>.jsonl.
source bench/gpu_env.sh s7 "$1"
date -u
if [ "$1" = x ]; then
  step "timeout 150 python3 -m pytest -m gpu -q -s -p no:cacheprovider tests/test_attention_fp8.py | grep -E 'rel L2|passed|failed|Error'" 12
  step "timeout 80 python3 bench/fp8_attention.py kernel --size 4.5B --keys 1,5 --json $J | grep randn" 4
  step "timeout 60 python3 bench/fp8_attention.py profile --size 4.5B --json $J | grep -v '^{'" 30
  step "timeout 75 $W --mode cached --compile --backend cudnn --json $J"
  step "timeout 90 $W --mode cached --compile --backend fp8-approx --json $J"
  step "timeout 75 $W --mode extra --compile --backend cudnn --json $J"
  step "timeout 90 $W --variant distill-fp8 --mode extra --compile --backend fp8-approx --json $J"
  step "timeout 80 python3 bench/fp8_attention.py dit --size 4.5B --json $J"
elif [ "$1" = w ]; then
  step "timeout 70 python3 bench/fp8_attention.py kernel --size 4.5B --keys 1,5 --json $J | grep randn" 4
  step "timeout 50 python3 bench/fp8_attention.py profile --size 4.5B --json $J | grep -v '^{'" 30
  step "timeout 70 $W --mode cached --compile --backend cudnn --json $J"
  step "timeout 80 $W --mode cached --compile --backend fp8-approx --json $J"
  step "timeout 110 $G --backend cudnn --save-latents /tmp/p2_bf16.pt --json $J"
  step "timeout 110 $G --backend fp8-approx --save-latents /tmp/p2_fp8.pt --json $J"
  step "python3 bench/fp8_attention.py compare /tmp/p2_bf16.pt /tmp/p2_fp8.pt --json $J"
elif [ "$1" = u ]; then
  step "timeout 70 python3 bench/fp8_attention.py kernel --size 4.5B --keys 1,5 --json $J | grep randn" 4
  step "timeout 50 python3 bench/fp8_attention.py profile --size 4.5B --json $J | grep -v '^{'" 30
elif [ "$1" = v ]; then
  step "timeout 70 python3 bench/fp8_attention.py kernel --size 4.5B --keys 1,5 --json $J | grep randn" 4
  step "timeout 50 python3 bench/fp8_attention.py profile --size 4.5B --json $J | grep -v '^{'" 30
  step "timeout 70 $W --mode cached --compile --backend cudnn --json $J"
  step "timeout 80 $W --mode cached --compile --backend fp8-approx --json $J"
elif [ "$1" = y ]; then
  step "timeout 110 $G --backend cudnn --save-latents /tmp/p2_bf16.pt --json $J"
  step "timeout 110 $G --backend fp8-approx --save-latents /tmp/p2_fp8.pt --json $J"
  step "python3 bench/fp8_attention.py compare /tmp/p2_bf16.pt /tmp/p2_fp8.pt --json $J"
  step "timeout 100 $G --backend cudnn --early-first-chunk --json $J"
  step "timeout 100 $G --backend fp8-approx --early-first-chunk --json $J"
elif [ "$1" = z ]; then
  step "timeout 280 $G24 --height 720 --width 720 --block-swap 40 --decode --mem-cap-gib 22 --json $J" 2
  step "timeout 150 python3 bench/fp8_attention.py dit --size 24B --json $J"
fi
echo done
