#!/bin/bash
# Multi-GPU session (device tool, 4 GPUs, one 10-minute call): GPU tests, attention sweep + profile,
# context-parallel scaling. Results land in $OUT (JSON lines + logs). Usage: bash bench/gpu_session_multi.sh
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
END=$(( $(date +%s) + ${BUDGET_S:-570} ))
left() { local r=$(( END - $(date +%s) )); (( r > $1 )) && echo $1 || echo $(( r > 5 ? r : 5 )); }
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site; fi
nvidia-smi -L; python3 -c 'import torch; print(torch.__version__, torch.backends.cudnn.version(), torch.cuda.device_count())'
J=$OUT/multi.jsonl
# phase 1: three things at once on different GPUs
( export CUDA_VISIBLE_DEVICES=0
  timeout 100 python3 bench/attention_sweep.py --size 4.5B --json $J
  timeout 100 python3 bench/profile_forward.py --size 4.5B --json $J
  timeout 150 python3 bench/profile_forward.py --size 4.5B --backend cudnn --compile --json $J
) > $OUT/phase1_gpu0.log 2>&1 &
( export CUDA_VISIBLE_DEVICES=1,2
  timeout 300 python3 -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_gpu_parallel.py -k "not 4" ) > $OUT/phase1_gpu12.log 2>&1 &
( export CUDA_VISIBLE_DEVICES=3
  timeout 300 python3 -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_gpu_dit.py tests/test_kernels.py \
    tests/test_offload.py tests/test_plan.py tests/test_checkpoint.py -s 2>&1 | grep -E "rel|passed|failed|FAIL|Error|SKIP" ) \
  > $OUT/phase1_gpu3.log 2>&1 &
wait
grep -v '^{' $OUT/phase1_gpu0.log | tail -n 60; tail -n 5 $OUT/phase1_gpu12.log; tail -n 15 $OUT/phase1_gpu3.log
# phase 2: all four GPUs
timeout $(left 120) python3 -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_gpu_parallel.py -k "4" > $OUT/phase2_test4.log 2>&1
tail -n 3 $OUT/phase2_test4.log
T="torchrun --standalone --nproc_per_node 4"
timeout $(left 130) $T bench/cp_scaling.py --size 4.5B --height 720 --width 720 --cp 1,2,4 --json $J 2>&1 | grep -E '^\{|Error'
timeout $(left 170) $T bench/cp_scaling.py --size 24B --height 720 --width 1280 --cp 2,4 --weight-fp8 --iters 1 \
  --gen-steps 4 --json $J 2>&1 | grep -E '^\{|Error'
timeout $(left 120) $T bench/cp_scaling.py --size 24B --height 720 --width 1280 --cp 4 --weight-fp8 --block-swap 32 \
  --mem-cap-gib 22 --iters 1 --skip-gen --json $J 2>&1 | grep -E '^\{|Error'
echo done
