#!/usr/bin/env bash
# The throwaway training venv for make_model.py: Python 3.11, mlflow==3.17.2 and docopt==0.6.2
# (docopt is published only as an sdist; uv builds it here like pip would).
# Usage: bash make_venv.sh [VENV_DIR]   (default /var/tmp/pyfunc-sdist-venv)
set -euo pipefail
venv="${1:-/var/tmp/pyfunc-sdist-venv}"
python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install uv
python3 -m uv venv "$venv" --python 3.11
python3 -m uv pip install --python "$venv/bin/python" mlflow==3.17.2 docopt==0.6.2
echo "now: $venv/bin/python $(cd "$(dirname "$0")" && pwd)/make_model.py"
