#!/usr/bin/env bash
# The training venvs of the default-logged models (Python 3.11, tensorflow-cpu, mlflow-skinny).
# Usage: bash make_venvs.sh [DIR]   (default /var/tmp/lockbuild-train); then for each kind:
#   DIR/<kind>/bin/python make_model.py <kind>
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:-/var/tmp/lockbuild-train}"
for kind in keras3-tf221 savedmodel-tf215 tfkeras-tf221; do
  uv venv "$dir/$kind" --python 3.11
  uv pip install --python "$dir/$kind/bin/python" --no-deps -r "$here/$kind/venv-freeze.txt"
done
# They were first made from (uv pip install ...):
#   keras3-tf221:     tensorflow-cpu==2.21.0 mlflow-skinny==3.17.2 pandas scipy
#   savedmodel-tf215: tensorflow-cpu==2.15.1 mlflow-skinny==2.22.5 'numpy<2' 'pandas<3' scipy 'starlette<1'
#   tfkeras-tf221:    tensorflow-cpu==2.21.0 mlflow-skinny==3.17.2 pandas scipy, then
#                     tf-keras==2.21.0 --no-deps (its `tensorflow` requirement would add the GPU build)
