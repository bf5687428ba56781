# Sourced by bench/gpu_session_s*.sh on the GPU machine: results file $J (for session name $1, part $2), the
# nvidia-cudnn-frontend wheel from .whl (the machine has no package index), quiet(), step(), and the bench commands.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
J=$OUT/$1$2.jsonl
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site
quiet() { grep -v "^ - \|nanobind\|Warning: \|warnings.warn" ; }
step() { local s=$SECONDS; eval "$1" 2>&1 | quiet | tail -n "${2:-1}"; echo "   [$((SECONDS - s)) s]"; }  # cmd [lines]
nvidia-smi -L; python3 -c 'import torch, cudnn; print(torch.__version__, torch.backends.cudnn.version(), cudnn.backend_version())' 2>&1 | tail -n 2
W="python3 bench/window_forward.py --size 4.5B"
G="python3 bench/generate.py --size 4.5B --variant distill --steps 16 --decode --t5 --compile --warmup"
G24="python3 bench/generate.py --size 24B --variant distill --steps 16 --weight-fp8"
