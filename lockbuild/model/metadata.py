"""Read what an MLflow model says about itself: MLmodel, python_env.yaml, requirements.txt
(with -r/-c includes and constraints.txt), conda.yaml as the fallback."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lockbuild.errors import ModelError
from lockbuild.fsutil import tree_digest, tree_files


@dataclass(frozen=True)
class ModelInfo:
    flavors: tuple[str, ...]
    loader_module: str
    mlflow_version: str
    python_version: str  # as logged, e.g. 3.11.7
    keras_version: str
    saved_format: str  # keras | savedmodel | ""
    requirements: tuple[str, ...]  # logged requirements, -r expanded
    constraints: tuple[str, ...]
    env_source: str  # which file the environment came from
    files: tuple[tuple[str, int, str], ...]  # (path, size, sha256)
    tree_digest: str
    input_example: str | None  # relative path of serving_input_example.json if present


def keras_major(requirements: tuple[str, ...] | list[str], saved_format: str) -> int | None:
    """Which Keras the model was saved with. MLflow's `keras_version` field holds tf.__version__,
    so it cannot tell; the pinned keras / tf-keras requirement and the saved format can."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    for line in requirements:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        name = canonicalize_name(req.name)
        if name == "tf-keras":
            return 2
        if name == "keras":
            pins = [s.version for s in req.specifier if s.operator in ("==", "===", "~=")]
            if pins:
                return int(pins[0].split(".")[0])
    if saved_format == "keras":
        return 3
    if saved_format == "savedmodel":
        return 2
    return None


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ModelError(f"cannot parse {path.name}: {e}", where=str(path)) from None


def read_requirements(path: Path, _seen: frozenset[Path] = frozenset(),
                      root: Path | None = None) -> tuple[list[str], list[str]]:
    """(requirements, constraints) from a pip requirements file, following -r and -c
    (never out of `root`, the model directory, when given)."""
    reqs: list[str] = []
    cons: list[str] = []
    if path in _seen:
        return reqs, cons
    if root is not None and not path.resolve().is_relative_to(root.resolve()):
        raise ModelError(f"{sorted(_seen)[-1].name if _seen else 'requirements'} includes {path}, outside the "
                         "model directory", where=str(path),
                         hint="lockbuild reads only the model directory: inline those requirements")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ModelError(f"{path.name} is referenced but missing", where=str(path)) from None
    for raw in lines:
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        if m := re.match(r"^(-r|--requirement)\s*=?\s*(.+)$", line):
            r, c = read_requirements((path.parent / m.group(2)).resolve(), _seen | {path}, root)
            reqs += r
            cons += c
        elif m := re.match(r"^(-c|--constraint)\s*=?\s*(.+)$", line):
            r, c = read_requirements((path.parent / m.group(2)).resolve(), _seen | {path}, root)
            cons += r + c
        elif line.startswith("-"):
            continue  # index options etc.: the spec's [python] index-url governs
        else:
            reqs.append(line)
    return reqs, cons


def _python_from_conda(conda: Any) -> tuple[str, list[str]]:
    py = ""
    pip_reqs: list[str] = []
    for dep in (conda or {}).get("dependencies", []) or []:
        if isinstance(dep, str) and re.match(r"^python([=<>]|$)", dep):
            py = re.sub(r"^python=*", "", dep)
        elif isinstance(dep, dict) and "pip" in dep:
            pip_reqs += [str(x) for x in dep["pip"]]
    return py, pip_reqs


def check_symlinks(root: Path) -> None:
    """Refuse symlinks that would make lockbuild read outside the model directory.

    A file symlink whose target stays inside the model directory is read as the file it names
    (the lock records its content; the image gets a regular file). A symlink out of the directory
    (absolute or via ..), a dangling one, and every directory symlink are refused.
    """
    base = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames) + sorted(filenames):
            p = Path(dirpath, name)
            if not p.is_symlink():
                continue
            rel = p.relative_to(root).as_posix()
            target = os.readlink(p)
            resolved = p.resolve()
            if not resolved.is_relative_to(base):
                raise ModelError(
                    f"model file {rel} is a symlink to {target}, outside the model directory",
                    where=str(p), hint="replace the link by a copy of the file inside the model directory "
                    "(lockbuild never reads outside it)")
            if resolved.is_dir():
                raise ModelError(f"model directory {rel} is a symlink (to {target}); directory links are not "
                                 "supported", where=str(p), hint="replace it by a real directory (a copy)")
            if not resolved.is_file():
                raise ModelError(f"model file {rel} is a dangling symlink (to {target})", where=str(p),
                                 hint="remove the link or restore its target")


def inside_model(root: Path, rel: str) -> Path:
    """root/rel, refused unless it resolves to a file inside root (no symlink out of the model)."""
    p = root / rel
    if not p.resolve().is_relative_to(root.resolve()):
        raise ModelError(f"model file {rel} resolves outside the model directory ({p.resolve()})", where=str(p),
                         hint="replace the link by a copy of the file inside the model directory")
    return p


def read_model(path: Path) -> ModelInfo:
    check_symlinks(path)
    mlmodel_path = path / "MLmodel"
    mlmodel = _load_yaml(mlmodel_path)
    if not isinstance(mlmodel, dict) or "flavors" not in mlmodel:
        raise ModelError("MLmodel has no flavors", where=str(mlmodel_path))
    flavors = mlmodel["flavors"] or {}
    pyfunc = flavors.get("python_function") or {}
    if not pyfunc:
        raise ModelError(
            "model has no python_function flavor, so MLflow's scoring server cannot serve it",
            where=str(mlmodel_path), hint="log the model with a flavor that adds python_function",
        )
    env_files = pyfunc.get("env") or {}
    if isinstance(env_files, str):
        env_files = {"conda": env_files}

    reqs: list[str] = []
    cons: list[str] = []
    python_version = ""
    env_source = ""
    if (path / "requirements.txt").is_file():
        reqs, cons = read_requirements(path / "requirements.txt", root=path)
        env_source = "requirements.txt"
    if (path / "constraints.txt").is_file() and not cons:
        cons = read_requirements(path / "constraints.txt", root=path)[0]
    virtualenv = env_files.get("virtualenv")
    if virtualenv and (path / virtualenv).is_file():
        pe = _load_yaml(path / virtualenv) or {}
        python_version = str(pe.get("python", "") or "")
    conda_file = env_files.get("conda") or "conda.yaml"
    if (path / conda_file).is_file():
        conda_py, conda_pip = _python_from_conda(_load_yaml(path / conda_file))
        python_version = python_version or conda_py
        if not env_source and conda_pip:
            reqs = [r for r in conda_pip if not r.startswith("-")]
            env_source = conda_file
    python_version = python_version or str(pyfunc.get("python_version", "") or "")
    if not env_source:
        raise ModelError(
            "the model logged no environment (no requirements.txt, no pip section in conda.yaml)",
            where=str(path),
            hint="re-log the model with pip_requirements=..., or add the requirements to [python] "
            "requirements in lockbuild.toml",
        )
    if not python_version:
        raise ModelError(
            "the model does not say which Python it was logged with (python_env.yaml / conda.yaml)",
            where=str(path), hint='set [target] python = "3.X" in lockbuild.toml',
        )

    tf = flavors.get("tensorflow") or flavors.get("keras") or {}
    keras_version = str(tf.get("keras_version", "") or "")
    saved_format = ""
    if (path / "data" / "model.keras").is_file() or any(path.glob("data/**/*.keras")):
        saved_format = "keras"
    elif any(path.glob("data/**/saved_model.pb")) or any(path.glob("**/saved_model.pb")):
        saved_format = "savedmodel"

    files = tuple(tree_files(path))
    example = pyfunc.get("serving_input_example") or None
    if example is None and (path / "serving_input_example.json").is_file():
        example = "serving_input_example.json"
    return ModelInfo(
        flavors=tuple(sorted(flavors)),
        loader_module=str(pyfunc.get("loader_module", "")),
        mlflow_version=str(mlmodel.get("mlflow_version", "") or ""),
        python_version=python_version,
        keras_version=keras_version,
        saved_format=saved_format,
        requirements=tuple(reqs),
        constraints=tuple(cons),
        env_source=env_source,
        files=files,
        tree_digest=tree_digest(list(files)),
        input_example=example,
    )
