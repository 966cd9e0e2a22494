#!/usr/bin/env bash
# The throwaway training venv for make_model.py: Python 3.11, mlflow==3.17.2, roman, and pip
# (add_libraries_to_model runs `python -m pip wheel`).
# Usage: bash make_venv.sh [VENV_DIR]   (default /var/tmp/pyfunc-wheels-venv)
set -euo pipefail
venv="${1:-/var/tmp/pyfunc-wheels-venv}"
python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install uv
python3 -m uv venv --seed "$venv" --python 3.11
python3 -m uv pip install --python "$venv/bin/python" mlflow==3.17.2 roman==5.2 pip
echo "now: $venv/bin/python $(cd "$(dirname "$0")" && pwd)/make_model.py"
