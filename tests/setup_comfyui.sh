#!/usr/bin/env bash
# Lay out a ComfyUI checkout for the `comfyui` tests (tests/test_comfyui.py, tests/test_frontend.py).
#
#   tests/setup_comfyui.sh <ComfyUI git dir or checkout> [dest]      (dest default: ../comfyui beside the repo)
#   export COMFYUI_PATH=<dest>
#   .venv/bin/python -m pytest -m comfyui tests/test_comfyui.py tests/test_frontend.py
#
# - Installs into the Python the tests run with: $PYTHON if set, else the venv tests/run.sh made ($MAGI_VENV,
#   default .venv) when it exists, else python3 on PATH.
#
# - <git dir>: a clone or bare mirror of Comfy-Org/ComfyUI; HEAD is checked out into dest (outside this repo,
#   never inside it). A missing large blob (e.g. a tokenizer ComfyUI does not need here) is tolerated.
# - ComfyUI's requirements are installed with the torch already present pinned: pip never replaces it.
# - If no torchvision matches that torch (the CPU test machine), the matching torchvision wheel's Python code goes
#   to <dest>/.magi-test-pydeps with a sitecustomize.py that declares the two C ops it registers at import; the
#   test harness puts that folder on the ComfyUI server's PYTHONPATH only. Same for spandrel (upscale nodes,
#   which the frontend expects). Test-only: a real install has a real torchvision.
# - Frontend tests also need Debian's chromium (apt-get install chromium) and `pip install playwright`
#   (its own browser download is not used).
set -euo pipefail
src=${1:?usage: setup_comfyui.sh <ComfyUI git dir or checkout> [dest]}
here=$(cd "$(dirname "$0")/.." && pwd)
dest=${2:-$here/../comfyui}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
case "$dest/" in "$here"/*) echo "dest must be outside the repo" >&2; exit 2;; esac
venv=${MAGI_VENV:-.venv}; case "$venv" in /*) ;; *) venv=$here/$venv;; esac
python=${PYTHON:-$( [ -x "$venv/bin/python" ] && echo "$venv/bin/python" || command -v python3 )}
"$python" -c "import torch" 2>/dev/null || { echo "$python has no torch: run tests/run.sh first (it makes .venv), or set PYTHON to the Python that has the pack's requirements" >&2; exit 2; }
echo "installing ComfyUI's requirements into $python"

if [ -f "$src/main.py" ]; then
  [ "$(cd "$src" && pwd)" = "$dest" ] || cp -a "$src/." "$dest/"
else
  gitdir=$src; [ -d "$src/.git" ] && gitdir=$src/.git
  index=$(mktemp -u)
  GIT_INDEX_FILE=$index git --git-dir="$gitdir" --work-tree="$dest" checkout -f HEAD -- . 2>/dev/null \
    || echo "note: some blobs were missing from $gitdir (checked out the rest)"
  rm -f "$index"
fi
[ -f "$dest/main.py" ] || { echo "no ComfyUI in $dest" >&2; exit 1; }

torch_version=$("$python" -c "import torch; print(torch.__version__.split('+')[0])")
pin=$(mktemp); echo "torch==$torch_version" > "$pin"
grep -v -E '^(torch|torchvision|torchaudio|torchsde|spandrel)\b' "$dest/requirements.txt" > "$dest/.magi-requirements.txt"
"$python" -m pip install -q -c "$pin" -r "$dest/.magi-requirements.txt" torchsde websocket-client requests
rm -f "$pin"

deps=$dest/.magi-test-pydeps
if ! "$python" -c "import torchvision" 2>/dev/null; then
  minor=$(echo "$torch_version" | cut -d. -f2)
  tv="0.$((minor + 15)).0"   # torchvision 0.N+15 goes with torch 2.N
  "$python" -m pip install -q --no-deps --target "$deps" "torchvision==$tv" spandrel
  cat > "$deps/sitecustomize.py" <<'PY'
# Test-only (tests/setup_comfyui.sh): this torchvision wheel's C ops do not load with the installed torch build;
# declare the two op schemas torchvision registers fake kernels for at import. Its Python code then works.
import torch

_lib = torch.library.Library("torchvision", "DEF")
_lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_lib.define("qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor")
PY
elif ! "$python" -c "import spandrel" 2>/dev/null; then
  "$python" -m pip install -q --no-deps --target "$deps" spandrel
fi
echo "ComfyUI ready in $dest: export COMFYUI_PATH=$dest"
echo "then: $python -m pytest -m comfyui tests/test_comfyui.py tests/test_frontend.py"
