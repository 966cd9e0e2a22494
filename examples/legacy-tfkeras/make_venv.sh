#!/usr/bin/env bash
# Recreate the venv that made this example: exactly the versions in venv-freeze.txt.
# It was first made from: tensorflow-cpu==2.15.1 mlflow-skinny==2.22.5 'numpy<2' 'pandas<3' scipy 'starlette<1'
# Usage: bash make_venv.sh [VENV_DIR]   (default: .venv beside this script)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/.venv}"
python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install uv
python3 -m uv venv "$venv" --python python3
python3 -m uv pip install --python "$venv/bin/python" -r "$here/venv-freeze.txt"
echo "now: $venv/bin/python $here/make_model.py"
