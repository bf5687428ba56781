#!/bin/bash
# Performance figures on ONE GPU (device tool, nvidia-h100-x1), split over two 10-minute calls:
#   bash bench/gpu_session_p.sh 1   # P2 + P7, P1, P6, P4, window vs reference, load time
#   bash bench/gpu_session_p.sh 2   # P5 (24B 720x1280), P2 without early first chunk, base schedule (cfg 3)
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
END=$(( $(date +%s) + ${BUDGET_S:-575} ))
left() { local r=$(( END - $(date +%s) )); (( r > $1 )) && echo $1 || echo $(( r > 5 ? r : 5 )); }
nvidia-smi -L
J=$OUT/p$1.jsonl
G="python3 bench/generate.py --size 4.5B --variant distill --steps 16 --decode --json $J"
W="python3 bench/window_forward.py --size 4.5B --json $J"
if [ "$1" = 1 ]; then
  timeout $(left 170) $G --t5 --compile --warmup --early-first-chunk
  timeout $(left 70) $W --mode cached --compile
  timeout $(left 70) $W --variant distill-fp8 --mode extra --compile
  timeout $(left 50) $W --mode cached
  timeout $(left 60) $W --mode extra --compile
  timeout $(left 90) python3 bench/load_time.py --size 4.5B --json $J
else
  timeout $(left 100) $G --weight-fp8 --kv-offload --block-swap 16
  timeout $(left 470) python3 bench/generate.py --size 24B --variant distill --steps 16 --height 720 --width 1280 \
    --weight-fp8 --json $J
  timeout $(left 150) $G --t5 --compile --warmup
  timeout $(left 150) python3 bench/generate.py --size 4.5B --variant base --steps 8 --compile --warmup --json $J
fi
echo done
