"""Does the model carry something bound to the Python minor it was logged with?

Asked only when the logged minor is not one Debian ships (3.10, 3.12, ...) and `lock` would run
the model on a neighbouring interpreter. Weights and graphs (a .keras file, a SavedModel, ONNX)
and pickles of library objects (an sklearn estimator, pickled by reference to its pinned library)
load on any minor the library supports. Python code does not travel that way:

- ``code_paths``: source files in the model (``code`` in the python_function flavor), imported at
  load time, written for the logged interpreter;
- a custom pyfunc (``python_model``: ``python_model.pkl`` is a cloudpickle of the user's
  PythonModel, or a models-from-code ``.py`` file);
- any pickle in the model that carries functions or classes by value (cloudpickle or dill write
  their code objects into the pickle: bytecode of one minor, which another minor cannot run).

The pickle check is a byte search for the modules that rebuild code by value
(``cloudpickle.cloudpickle``, ``dill._dill``): nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path

import yaml

PICKLE_SUFFIXES = (".pkl", ".pickle", ".cloudpickle", ".joblib", ".pt", ".pth")
BY_VALUE = (b"cloudpickle.cloudpickle", b"dill._dill")
_CHUNK = 1 << 22


def _carries_code(path: Path) -> bool:
    keep = max(len(m) for m in BY_VALUE) - 1
    tail = b""
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            buf = tail + chunk
            if any(m in buf for m in BY_VALUE):
                return True
            tail = buf[-keep:]
    return False


def bound_artifacts(model_dir: Path, files: tuple[tuple[str, int, str], ...]) -> list[str]:
    """What in the model is bound to its logged Python minor, one phrase each ([] = nothing)."""
    out: list[str] = []
    try:
        mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        mlmodel = {}
    flavors = mlmodel.get("flavors") if isinstance(mlmodel, dict) else None
    pyfunc = (flavors or {}).get("python_function") if isinstance(flavors, dict) else None
    pyfunc = pyfunc if isinstance(pyfunc, dict) else {}
    code = pyfunc.get("code")
    if code:
        n = sum(1 for p, _, _ in files if p.startswith(f"{str(code).rstrip('/')}/") and p.endswith(".py"))
        out.append(f"code_paths: Python source in {code}/ ({n} .py file(s)), imported when the model loads")
    python_model = pyfunc.get("python_model") or pyfunc.get("model_code_path")
    if python_model:
        out.append(f"a custom pyfunc: {python_model} (your PythonModel, "
                   + ("Python source" if str(python_model).endswith(".py") else "pickled with cloudpickle") + ")")
    for rel, _size, _sha in files:
        if rel == python_model or not rel.lower().endswith(PICKLE_SUFFIXES):
            continue
        p = model_dir / rel
        try:
            if _carries_code(p):
                out.append(f"{rel} holds Python functions or classes pickled by value (cloudpickle/dill bytecode)")
        except OSError:
            continue
    return out
