#!/usr/bin/env bash
# Set up and test on a fresh CPU machine, as a new user would: a brand-new virtual environment (.venv, git-ignored;
# MAGI_VENV to put it elsewhere) into which pip resolves today's versions of our requirements, then the default
# test suite (CPU only: `gpu` and `comfyui` tests are skipped). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${MAGI_VENV:-.venv}
python3 -m venv --clear "$venv"
"$venv/bin/python" -m pip install -q torch==2.13.0 -r requirements.txt -r requirements-test.txt
"$venv/bin/python" -m pip list --format=freeze | grep -iE '^(torch|transformers|kernels|av|safetensors|numpy)==' | tr '\n' ' '
echo
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
