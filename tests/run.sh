#!/usr/bin/env bash
# Set up a fresh CPU machine and run the default test suite. Fails if no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0 -r requirements.txt -r requirements-test.txt
python -m pytest -q -p no:cacheprovider "$@"
