#!/bin/bash
# Session 5 (2026-12-07): issue 14 on one H100 (device tool, nvidia-h100-x1), three calls back to back.
# Needs the nvidia-cudnn-frontend 1.32.0 wheel (cp312 manylinux) in .whl (carry it: the GPU machine has no index).
#   bash bench/gpu_session_s5.sh a   # fp8 GPU tests, repeated-call diagnosis, kernel speed/error, per-forward DiT
#                                    # error 4.5B and 24B, P1 window bf16 vs fp8 (compile)
#   bash bench/gpu_session_s5.sh b   # P2 bf16 and fp8 (+ deviation of the two generations), P7 fp8, P6 windows
#   bash bench/gpu_session_s5.sh c   # P4b (24B 720x720, block swap 40, uncapped), P5 fp8 (24B 720x1280)
#   (all three ran on an H200, 2026-12-07: BENCHMARKS.md session 5; no H100 could be started)
#   bash bench/gpu_session_s5.sh e   # after the one-pass scale reductions: kernel rows (backend vs kernel alone), P1 fp8
#   bash bench/gpu_session_s5.sh d   # next: P4b under a real 22 GiB cap with VAE decode, P5 bf16 baseline on the same card
source bench/gpu_env.sh s5 "$1"
if [ "$1" = a ]; then
  timeout 120 python3 -m pytest -m gpu -q -s -p no:cacheprovider tests/test_attention_fp8.py 2>&1 \
    | grep -E "rel L2|passed|failed|Error" | head -n 12
  timeout 40 python3 bench/fp8_attention.py diag --json $J 2>&1 | quiet | tail -n 3
  python3 -c "import json,sys; r=[json.loads(l) for l in open('$J') if 'diag' in l]; e=[float(x) for x in r[0]['errs']]; print('diag', e); sys.exit(not max(e) < 0.2)" || exit 1
  timeout 80 python3 bench/fp8_attention.py kernel --size 4.5B --keys 1,5 --json $J 2>&1 | quiet | tail -n 5
  timeout 80 python3 bench/fp8_attention.py dit --size 4.5B --json $J 2>&1 | quiet | tail -n 1
  timeout 130 python3 bench/fp8_attention.py dit --size 24B --json $J 2>&1 | quiet | tail -n 1
  timeout 75 $W --mode cached --compile --backend cudnn --json $J 2>&1 | quiet | tail -n 1
  timeout 90 $W --mode cached --compile --backend fp8-approx --json $J 2>&1 | quiet | tail -n 1
elif [ "$1" = b ]; then
  timeout 110 $G --backend cudnn --save-latents /tmp/p2_bf16.pt --json $J 2>&1 | quiet | tail -n 1
  timeout 110 $G --backend fp8-approx --save-latents /tmp/p2_fp8.pt --json $J 2>&1 | quiet | tail -n 1
  python3 bench/fp8_attention.py compare /tmp/p2_bf16.pt /tmp/p2_fp8.pt --json $J
  timeout 100 $G --backend fp8-approx --early-first-chunk --json $J 2>&1 | quiet | tail -n 1
  timeout 75 $W --mode extra --compile --backend cudnn --json $J 2>&1 | quiet | tail -n 1
  timeout 90 $W --variant distill-fp8 --mode extra --compile --backend fp8-approx --json $J 2>&1 | quiet | tail -n 1
elif [ "$1" = e ]; then
  timeout 70 python3 bench/fp8_attention.py kernel --size 4.5B --keys 1,5 --json $J 2>&1 | quiet | grep randn
  timeout 75 $W --mode cached --compile --backend fp8-approx --json $J 2>&1 | quiet | tail -n 1
elif [ "$1" = d ]; then
  timeout 260 $G24 --height 720 --width 720 --block-swap 40 --decode --mem-cap-gib 22 --json $J 2>&1 | quiet | tail -n 2
  timeout 330 $G24 --height 720 --width 1280 --compile --warmup --backend cudnn --json $J 2>&1 | quiet | tail -n 2
else
  timeout 230 $G24 --height 720 --width 720 --block-swap 40 --json $J 2>&1 | quiet | tail -n 2
  timeout 340 $G24 --height 720 --width 1280 --compile --warmup --backend fp8-approx --json $J 2>&1 | quiet | tail -n 2
fi
echo done
