#!/bin/bash
# Session 3 performance calls on a 2-GPU machine (device tool, nvidia-h200-x2), two lanes in parallel:
#   bash bench/gpu_session_s3.sh a   # GPU0: P5 (24B 720x1280, compile) | GPU1: P1 rerun, base schedule 64 steps
#   bash bench/gpu_session_s3.sh b   # GPU0: quant8 GPU tests, attention sweeps (4.5B, 24B), 24B profile | GPU1: quant8 windows (P1, P6), P2 with quant8
#                                    (quant8 was removed again after this call: run b at commit a8f5f82)
#   bash bench/gpu_session_s3.sh d   # one GPU: cuDNN backend with SDPA's own GQA: GPU kernel tests, P1 twice, P1 with SDPA
#   bash bench/gpu_session_s3.sh c   # pool GPU tests (block swap, compile), then P1 with SDPA's own GQA vs cuDNN folded, sweep
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
nvidia-smi -L; python3 -c 'import torch, triton; print(torch.__version__, triton.__version__, torch.backends.cudnn.version())'
J0=$OUT/s3$1-gpu0.jsonl; J1=$OUT/s3$1-gpu1.jsonl
W="python3 bench/window_forward.py --size 4.5B"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site \
  .whl/*.whl && export PYTHONPATH=/tmp/site; fi
if [ "$1" = d ]; then  # one GPU: cuDNN with SDPA's own GQA (no fold copies): GPU tests, P1 x2, SDPA for comparison
  ( export CUDA_VISIBLE_DEVICES=0
    timeout 120 python3 -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_kernels.py 2>&1 | tail -n 4
    timeout 80 $W --mode cached --compile --json $J0
    timeout 80 $W --mode cached --compile --backend sdpa --json $J0
    timeout 80 $W --mode cached --compile --json $J0
  ) > $OUT/d_gpu0.log 2>&1 &
elif [ "$1" = c ]; then  # one after the other: the pool tests use both GPUs
  ( export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    timeout 240 python3 -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_gpu_parallel.py -k "pool or 2" 2>&1 | tail -n 15
    export CUDA_VISIBLE_DEVICES=0
    timeout 80 $W --mode cached --compile --backend sdpa --json $J0
    timeout 80 $W --mode cached --compile --backend cudnn --json $J0
    timeout 100 python3 bench/attention_sweep.py --size 4.5B --keys 2,4 --json $J0
  ) > $OUT/c_gpu0.log 2>&1 &
elif [ "$1" = a ]; then
  ( export CUDA_VISIBLE_DEVICES=0
    timeout 570 python3 bench/generate.py --size 24B --variant distill --steps 16 --height 720 --width 1280 \
      --weight-fp8 --compile --warmup --json $J0 ) > $OUT/a_gpu0.log 2>&1 &
  ( export CUDA_VISIBLE_DEVICES=1
    timeout 90 $W --mode cached --compile --json $J1
    timeout 60 $W --mode cached --json $J1
    timeout 410 python3 bench/generate.py --size 4.5B --variant base --steps 64 --compile --warmup --json $J1
  ) > $OUT/a_gpu1.log 2>&1 &
else
  ( export CUDA_VISIBLE_DEVICES=0
    timeout 150 python3 -m pytest -m gpu -q -rs -s -p no:cacheprovider tests/test_quant8.py tests/test_kernels.py \
      2>&1 | grep -E "quant8 rel|passed|failed|FAIL|Error|SKIP"
    timeout 120 python3 bench/attention_sweep.py --size 4.5B --json $J0
    timeout 120 python3 bench/attention_sweep.py --size 24B --height 720 --width 1280 --keys 1,3,5 --json $J0
    timeout 180 python3 bench/profile_forward.py --size 24B --height 720 --width 1280 --compile --json $J0
  ) > $OUT/b_gpu0.log 2>&1 &
  ( export CUDA_VISIBLE_DEVICES=1
    timeout 70 $W --mode extra --compile --json $J1
    timeout 70 $W --variant distill-fp8 --mode extra --compile --json $J1
    timeout 80 $W --variant distill-fp8 --mode extra --compile --backend quant8 --json $J1
    timeout 80 $W --mode cached --compile --backend quant8 --json $J1
    timeout 200 python3 bench/generate.py --size 4.5B --variant distill --steps 16 --decode --t5 --compile --warmup \
      --backend quant8 --json $J1
  ) > $OUT/b_gpu1.log 2>&1 &
fi
wait
for f in $OUT/$1_gpu*.log; do echo "== $f"; grep -v '^{' $f | tail -n 40; done
echo done
