#!/bin/bash
# Session 9 (2026-12-07): `fast` drops the first chunk's redundant distill copies (sampling/plan.py
# without_redundant_copies) and --warmup times a warm T5 encode; one H100 (device tool), every baseline re-run in the
# same call. Needs the nvidia-cudnn-frontend 1.32.0 wheel (cp312 manylinux) in .whl (carry it).
#   bash bench/gpu_session_s9.sh a   # P7 fp8 / bf16 / fp8 with the copies kept; P2 bf16 with and without the copies
#                                    # (+ deviation of the two generations)
#   bash bench/gpu_session_s9.sh b   # P2 fp8; 24B per-forward error; profile of the compiled bf16 P1 window; fp8 GPU
#                                    # tests; P6 windows
#   bash bench/gpu_session_s9.sh c   # P5 fp8 (24B 720x1280) on an H100
#   bash bench/gpu_session_s9.sh d   # compiled islands with constant sizes vs all sizes symbolic; P1 bf16 / fp8 and
#                                    # the bf16 profile; GPU tests of the compiled DiT and fp8; P7 fp8
#   bash bench/gpu_session_s9.sh e   # P2 bf16 / fp8, P7 bf16
# Each step prints its wall time; results are JSON lines in $OUT/s9<part>.jsonl.
source bench/gpu_env.sh s9 "$1"
date -u
if [ "$1" = a ]; then
  step "timeout 110 $G --backend fp8-approx --early-first-chunk --json $J | grep -iE 'warn|fall|chunk 0|total_s'" 3
  step "timeout 100 $G --backend cudnn --early-first-chunk --json $J"
  step "timeout 110 $G --backend fp8-approx --early-first-chunk --keep-copies --json $J"
  step "timeout 100 $G --backend cudnn --save-latents /tmp/p2_new.pt --json $J"
  step "timeout 100 $G --backend cudnn --keep-copies --save-latents /tmp/p2_ref.pt --json $J"
  step "python3 bench/fp8_attention.py compare /tmp/p2_ref.pt /tmp/p2_new.pt --json $J"
elif [ "$1" = b ]; then
  step "timeout 110 $G --backend fp8-approx --json $J"
  step "timeout 150 python3 bench/fp8_attention.py dit --size 24B --json $J"
  step "timeout 100 python3 bench/profile_forward.py --size 4.5B --compile --backend cudnn --json $J | grep -v '^{'" 26
  step "timeout 120 python3 -m pytest -m gpu -q -s -p no:cacheprovider tests/test_attention_fp8.py | grep -E 'rel L2|passed|failed|Error'" 12
  step "timeout 75 $W --mode extra --compile --backend cudnn --json $J"
  step "timeout 90 $W --variant distill-fp8 --mode extra --compile --backend fp8-approx --json $J"
elif [ "$1" = d ]; then
  step "timeout 90 python3 bench/islands.py --json $J | grep -v '^{'" 5
  step "timeout 90 python3 bench/islands.py --all-dynamic --json $J | grep -v '^{'" 5
  step "timeout 70 $W --mode cached --compile --backend cudnn --json $J"
  step "timeout 70 $W --mode cached --compile --backend cudnn --all-dynamic --json $J"
  step "timeout 80 $W --mode cached --compile --backend fp8-approx --json $J"
  step "timeout 80 $W --mode cached --compile --backend fp8-approx --all-dynamic --json $J"
  step "timeout 100 python3 bench/profile_forward.py --size 4.5B --compile --backend cudnn --json $J | grep -v '^{'" 16
  step "timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu_dit.py tests/test_attention_fp8.py | tail -n 3" 3
  step "timeout 110 $G --backend fp8-approx --early-first-chunk --json $J"
elif [ "$1" = e ]; then
  step "timeout 100 $G --backend cudnn --json $J"
  step "timeout 100 $G --backend fp8-approx --json $J"
  step "timeout 100 $G --backend cudnn --early-first-chunk --json $J"
elif [ "$1" = c ]; then
  step "timeout 560 $G24 --height 720 --width 1280 --compile --warmup --backend fp8-approx --json $J" 2
fi
echo done
