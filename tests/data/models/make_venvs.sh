#!/usr/bin/env bash
# The training venvs of the test models (tensorflow-cpu, mlflow-skinny; Python 3.11 unless named).
# Usage: bash make_venvs.sh [DIR]   (default /var/tmp/lockbuild-train); then for each kind:
#   DIR/<kind>/bin/python make_model.py <kind>
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:-/var/tmp/lockbuild-train}"
for kind in keras3-tf221 savedmodel-tf215 tfkeras-tf221 keras3-py310 keras3-py312 keras3-py313 keras3-macos; do
  case "$kind" in  # the interpreter each was trained on (pyenv's CPython builds here)
    keras3-py310) py=3.10 ;; keras3-py312) py=3.12 ;; keras3-py313) py=3.13 ;; *) py=3.11 ;;
  esac
  uv venv "$dir/$kind" --python "$py"
  uv pip install --python "$dir/$kind/bin/python" --no-deps -r "$here/$kind/venv-freeze.txt"
done
# They were first made from (uv pip install ...):
#   keras3-tf221:     tensorflow-cpu==2.21.0 mlflow-skinny==3.17.2 pandas scipy
#   savedmodel-tf215: tensorflow-cpu==2.15.1 mlflow-skinny==2.22.5 'numpy<2' 'pandas<3' scipy 'starlette<1'
#   tfkeras-tf221:    tensorflow-cpu==2.21.0 mlflow-skinny==3.17.2 pandas scipy, then
#                     tf-keras==2.21.0 --no-deps (its `tensorflow` requirement would add the GPU build)
#   keras3-py310/py312/py313: tensorflow-cpu==2.21.0 mlflow-skinny==3.17.2 pandas scipy (CPython 3.10.13,
#                     3.12.1, 3.13.0; under 3.12 MLflow's inference logged only tensorflow==2.21.0)
#   keras3-macos:     tensorflow-cpu==2.16.2 mlflow-skinny==3.17.2 pandas scipy (the Mac-style
#                     requirements file is make_model.py's MAC_REQUIREMENTS, logged as pip_requirements)
