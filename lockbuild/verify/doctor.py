"""`lockbuild doctor`: static checks on spec + model + lock, before anything is built.

RULES is the one readable table: each rule has an id, a severity, and a check function that
returns findings saying what is wrong, why it breaks at serve time, and the spec change that
fixes it. `lockbuild lock` prints warnings and fails on errors (writing no lock); `doctor --strict` makes warnings
errors.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable

from packaging.requirements import InvalidRequirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from lockbuild.fetch.cache import Cache
from lockbuild.lockfile.model import Lock
from lockbuild.model.metadata import keras_major, requirement
from lockbuild.verify.finding import Finding  # rule, severity, what (message), why, fix

# Distributions that install the same top-level package: at most one may be present.
SAME_FILES = [
    ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-aarch64", "tf-nightly"),
    ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"),
    ("mlflow", "mlflow-skinny", "mlflow-tracing"),
]


def _versions(lock: Lock) -> dict[str, str]:
    return {w.name: w.version for w in lock.python.packages}


def _pins(requirements: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in requirements:
        try:
            req = requirement(line)
        except InvalidRequirement:
            continue
        exact = [s.version for s in req.specifier if s.operator in ("==", "===")]
        if exact:
            out[canonicalize_name(req.name)] = exact[0]
    return out


def rule_python_minor(lock: Lock, cache: Cache | None) -> list[Finding]:
    from lockbuild.resolve import runtime

    if not lock.model.python_version:
        return []
    try:
        logged = Version(lock.model.python_version)
    except InvalidVersion:
        return [Finding("python-minor", "error", f"the model logged an unreadable Python {lock.model.python_version!r}",
                        "the image's interpreter cannot be checked against the model's",
                        'set [target] python = "3.X" in lockbuild.toml and re-lock')]
    image = Version(lock.target.python)
    if (logged.major, logged.minor) == (image.major, image.minor):
        return []
    minor = f"{logged.major}.{logged.minor}"
    chosen = f"{image.major}.{image.minor}"
    # The spec's own [target] python, or lock's recorded choice for a minor Debian does not ship: said
    # loudly, but it does not block the lock. A silent mismatch does.
    by_lock = lock.target.python_choice is not None and lock.target.python_choice.chosen == chosen
    severity = "warning" if by_lock or lock.target.python_requested == chosen else "error"
    if minor in runtime.SUITES:
        fix = f'remove [target] python (or set it to "{minor}") and re-lock'
    elif by_lock or lock.target.python_requested == chosen:
        fix = (f"re-log the model under Python {chosen} (Debian ships {', '.join(runtime.SUITES)}, not {minor}) to "
               "serve it on the interpreter it was logged with")
    else:
        fix = (f"re-lock with `lockbuild lock`: it chooses the nearest Debian interpreter and records why (or "
               f"re-log the model under Python {chosen})")
    how = (" (chosen by lock: the nearest Debian interpreter for which the environment resolves)" if by_lock
           else " (set by [target] python)" if lock.target.python_requested == chosen else "")
    return [Finding("python-minor", severity, f"the model was logged with Python {logged}, the image runs {image}{how}",
                    "pickled models and compiled wheels are tied to the Python minor; loading can fail "
                    "with pickle-protocol or ABI errors", fix)]


def rule_mlflow_version(lock: Lock, cache: Cache | None) -> list[Finding]:
    v = _versions(lock)
    locked = v.get("mlflow-skinny") or v.get("mlflow")
    if lock.model.mlflow_version and locked and locked != lock.model.mlflow_version:
        return [Finding("mlflow-version", "warning",
                        f"the model was logged with MLflow {lock.model.mlflow_version}, the lock has {locked}",
                        "flavor loaders change between MLflow versions; the model may not load",
                        f'pin "mlflow-skinny=={lock.model.mlflow_version}" in [python] requirements and re-lock')]
    return []


def _wheel_names(path: object) -> set[str]:
    with zipfile.ZipFile(str(path)) as zf:
        return set(zf.namelist())


_LOADER_WHY = "pyfunc.load_model imports the loader module and calls its _load_pyfunc; the server fails at start"
_RELOG = "re-log the model with its flavor's log_model (which writes the right loader_module), then re-lock"


def rule_loader_module(lock: Lock, cache: Cache | None) -> list[Finding]:
    """MLflow's pyfunc loader imports `loader_module` and calls its `_load_pyfunc`: it must be MLflow's
    module for one of the model's flavors (in the locked MLflow), or a module the model's code/ or a
    locked wheel provides; never a standard-library module (`os` builds, verifies, and dies at start)."""
    import re
    import sys

    mod = lock.model.loader_module
    if not mod:
        return []
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", mod):
        return [Finding("loader-module", "error", f"the model's loader_module {mod!r} is not a module name",
                        _LOADER_WHY, _RELOG)]
    if mod.split(".")[0] in sys.stdlib_module_names:
        return [Finding("loader-module", "error",
                        f"the model's loader_module {mod} is a standard-library module, not a pyfunc loader",
                        _LOADER_WHY + " (it has no _load_pyfunc)", _RELOG)]
    if mod.startswith("mlflow."):
        return _mlflow_loader(lock, cache, mod)
    return _custom_loader(lock, cache, mod)


def _provides(names: set[str] | list[str], rel: str) -> bool:
    return f"{rel}.py" in names or f"{rel}/__init__.py" in names


def _mlflow_loader(lock: Lock, cache: Cache | None, mod: str) -> list[Finding]:
    """MLflow's own loader: a flavor of the model, present in the locked MLflow wheel."""
    flavor = mod.split(".")[1]
    if flavor != "pyfunc" and flavor not in lock.model.flavors:
        return [Finding("loader-module", "error", f"the model's loader_module {mod} belongs to no flavor of the "
                        f"model ({', '.join(lock.model.flavors)})", _LOADER_WHY, _RELOG)]
    if cache is None:
        return []
    wheel = next((w for w in lock.python.packages if w.name in ("mlflow-skinny", "mlflow")), None)
    if wheel is None:
        return [Finding("loader-module", "error", "no MLflow distribution is locked",
                        "the scoring server is MLflow's", 'set [python] serving = "mlflow-skinny" and re-lock')]
    path = cache.get(wheel.sha256, wheel.size)
    if path is None:
        return []  # not downloaded yet: checked again by `doctor` after `image`
    if not _provides(_wheel_names(path), mod.replace(".", "/")):
        return [Finding("loader-module", "error",
                        f"the model's loader {mod} does not exist in {wheel.name} {wheel.version}", _LOADER_WHY,
                        f'pin "{wheel.name}=={lock.model.mlflow_version}" in [python] requirements and re-lock')]
    return []


def _custom_loader(lock: Lock, cache: Cache | None, mod: str) -> list[Finding]:
    """A custom loader: in the model's code/ (MLflow puts it on sys.path) or in a locked wheel."""
    rel = mod.replace(".", "/")
    files = {f.path for f in lock.model.files}
    if any(f"{d}/{rel}{suffix}" in files for d in ("code", "code/code") for suffix in (".py", "/__init__.py")):
        return []
    if any(f.path.startswith("code/") and (f.path.endswith(f"/{rel}.py") or f.path.endswith(f"/{rel}/__init__.py"))
           for f in lock.model.files):
        return []
    if cache is None:
        return []
    for w in lock.python.packages:
        p = cache.get(w.sha256, w.size)
        if p is None:
            return []  # cannot tell before the wheels are downloaded
        if _provides(_wheel_names(p), rel):
            return []
    return [Finding("loader-module", "error",
                    f"the model's loader_module {mod} is neither MLflow's nor in the model's code/ nor in a locked "
                    "wheel", _LOADER_WHY, "log the model with code_paths=[...] holding the loader, or add the package "
                    "that provides it to the requirements, then re-lock")]


def rule_yanked(lock: Lock, cache: Cache | None) -> list[Finding]:
    return [Finding("yanked", "warning", f"{w.name} {w.version} is yanked on its index (reason: {w.yanked})",
                    "a release is yanked when it is broken or insecure; [python] allow-yanked accepted it",
                    f"pin another {w.name} version in [python] requirements and remove it from allow-yanked")
            for w in lock.python.packages if w.yanked]


def rule_keras_major(lock: Lock, cache: Cache | None) -> list[Finding]:
    v = _versions(lock)
    model_major = keras_major(lock.model.requirements, lock.model.saved_format)
    tf = v.get("tensorflow-cpu") or v.get("tensorflow")
    if model_major is None or tf is None:
        return []
    if "tf-keras" in v:
        serve_major = 2 if dict(lock.runtime.env).get("TF_USE_LEGACY_KERAS") == "1" else 3
    elif "keras" in v:
        serve_major = Version(v["keras"]).major
    else:
        serve_major = 3 if Version(tf) >= Version("2.16") else 2
    if serve_major != model_major:
        how = ("a SavedModel directory" if lock.model.saved_format == "savedmodel" else
               "a .keras file" if lock.model.saved_format == "keras" else "its logged requirements")
        return [Finding("keras-major", "error",
                        f"the model was saved with Keras {model_major} ({how}); the image would load it with "
                        f"Keras {serve_major} (TensorFlow {tf})",
                        "Keras 3 cannot load a Keras 2 SavedModel (and Keras 2 cannot read .keras v3 files)",
                        "pin the TensorFlow/Keras the model was logged with in [python] requirements, or add "
                        '"tf-keras" and [image] env = { TF_USE_LEGACY_KERAS = "1" }, then re-lock')]
    return []


def rule_tf_keras_env(lock: Lock, cache: Cache | None) -> list[Finding]:
    v = _versions(lock)
    if "tf-keras" in v and dict(lock.runtime.env).get("TF_USE_LEGACY_KERAS") != "1":
        return [Finding("tf-keras-env", "warning",
                        "tf-keras is locked but the image does not set TF_USE_LEGACY_KERAS=1",
                        "tf.keras then means Keras 3: /ping answers 200, /invocations fails for a Keras 2 model",
                        '[image] env = { TF_USE_LEGACY_KERAS = "1" } in lockbuild.toml, then re-lock')]
    return []


def rule_same_files(lock: Lock, cache: Cache | None) -> list[Finding]:
    v = _versions(lock)
    out = []
    for group in SAME_FILES:
        present = [n for n in group if n in v]
        if len(present) > 1 and (group[0] != "mlflow" or len({v[n] for n in present}) > 1):
            listed = ", ".join(f"{n}=={v[n]}" for n in present)
            out.append(Finding("same-files", "error", f"{listed} install the same top-level package",
                               "the last one installed silently wins; imports then mix two builds",
                               f"keep one: [python] variants = {{ \"{present[0]}\" = \"{present[1]}\" }} "
                               "(or the reverse), then re-lock"))
    return out


def rule_changed_pins(lock: Lock, cache: Cache | None) -> list[Finding]:
    v = _versions(lock)
    pins = _pins(lock.model.requirements)
    out = []
    for name, pinned in sorted(pins.items()):
        if name in ("mlflow",):
            continue
        if name in v and v[name] != pinned:
            out.append(Finding("changed-pin", "warning",
                               f"the model pinned {name}=={pinned}, the lock has {v[name]}",
                               "the model was trained and logged with the pinned version",
                               f'remove what overrides it (e.g. [python] requirements) so "{name}=={pinned}" holds'))
    return out


def rule_omitted(lock: Lock, cache: Cache | None) -> list[Finding]:
    from lockbuild.lockfile.prune import DEFAULT_OMIT

    chosen = [n for n in lock.python.omitted if n not in DEFAULT_OMIT]  # defaults are documented, smoke-proven
    if not chosen:
        return []
    return [Finding("omitted", "warning",
                    f"resolved distributions are left out of the image: {', '.join(chosen)}",
                    "if the model or server imports them, the container fails with ModuleNotFoundError",
                    "remove them from [python] omit unless `lockbuild smoke` proves the image serves without them")]


RULES: list[tuple[str, Callable[[Lock, Cache | None], list[Finding]]]] = [
    ("python-minor", rule_python_minor),
    ("mlflow-version", rule_mlflow_version),
    ("loader-module", rule_loader_module),
    ("keras-major", rule_keras_major),
    ("tf-keras-env", rule_tf_keras_env),
    ("same-files", rule_same_files),
    ("changed-pin", rule_changed_pins),
    ("omitted", rule_omitted),
    ("yanked", rule_yanked),
]


def doctor(lock: Lock, cache: Cache | None = None) -> list[Finding]:
    findings: list[Finding] = []
    for _name, rule in RULES:
        findings += rule(lock, cache)
    return findings
