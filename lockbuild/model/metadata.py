"""Read what an MLflow model says about itself: MLmodel, python_env.yaml, requirements.txt
(with -r/-c includes and constraints.txt), conda.yaml as the fallback.

Slightly over ~350 lines on purpose: the requirement-line rules (includes inside the model only,
index lines without credentials, bundled wheels, refused -e/VCS/URL lines) and the symlink rules
are the model's trust boundary and read best next to the reader that applies them."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lockbuild.errors import ModelError, RequirementsError
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
    index_url: str = ""  # from a requirements file's --index-url, credentials stripped
    extra_index_urls: tuple[str, ...] = ()  # --extra-index-url lines, credentials stripped
    bundled_wheels: tuple[str, ...] = ()  # model-relative paths of wheels the requirements point at


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


def python_scalar(value: Any, path: Path, *keys: str) -> str:
    """A Python version as written in the YAML file. Unquoted `python: 3.10` is the float 3.1 to a
    YAML loader: the scalar's own text is read back from the file's node tree (nothing constructed)."""
    if not isinstance(value, float):
        return str(value or "")
    try:
        node: Any = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
        for key in keys:
            node = next(v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key)
        return str(node.value) if isinstance(node, yaml.ScalarNode) else str(value)
    except (StopIteration, AttributeError, TypeError, ValueError, OSError, yaml.YAMLError):
        return str(value)


def strip_userinfo(url: str) -> str:
    """The URL without ``user:password@``: credentials never reach the lock, the image or provenance."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=host))


@dataclass
class Requirements:
    """What a requirements file (with its -r/-c includes) says."""

    requirements: list[str]
    constraints: list[str]
    index_url: str = ""
    extra_index_urls: list[str] | None = None
    bundled_wheels: list[str] | None = None  # model-relative wheel paths


_URL_REQ = re.compile(r"^(git\+|hg\+|svn\+|bzr\+|https?://|file:|ftp://)", re.I)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _bad(where: str, message: str, hint: str) -> RequirementsError:
    return RequirementsError(message, where=where, hint=hint)


def read_requirements(path: Path, _seen: frozenset[Path] = frozenset(), *,
                      root: Path | None = None) -> tuple[list[str], list[str]]:
    """(requirements, constraints) from a pip requirements file, following -r and -c."""
    r = parse_requirements(path, root=root, _seen=_seen)
    return r.requirements, r.constraints


def parse_requirements(path: Path, *, root: Path | None = None, _seen: frozenset[Path] = frozenset(),
                       _out: Requirements | None = None, _as_constraints: bool = False) -> Requirements:
    """Parse a pip requirements file the way MLflow writes them (and users edit them).

    ``root`` is the model directory: -r/-c includes and wheel paths must stay inside it. Lines
    pip would accept but lockbuild cannot pin (-e, VCS, URLs, local paths outside the model)
    are refused with the file and line, never dropped silently."""
    path = path.resolve()
    root = (root or path.parent).resolve()
    out = _out if _out is not None else Requirements([], [], "", [], [])
    if path in _seen:
        return out
    rel = path.relative_to(root).as_posix() if _inside(path, root) else str(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ModelError(f"{path.name} is referenced but missing", where=str(path)) from None
    except (UnicodeDecodeError, IsADirectoryError) as e:
        raise ModelError(f"{rel} cannot be read as a requirements file: {e}", where=str(path)) from None
    return parse_lines(lines, rel, base=path.parent, root=root, _seen=_seen | {path}, _out=out,
                       _as_constraints=_as_constraints)


def _logical_lines(lines: list[str]) -> list[tuple[int, str]]:
    """(first line number, text) with pip's backslash continuations joined."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for lineno, raw in enumerate(lines, 1):
        if pending is not None:
            raw = pending[1] + " " + raw.strip()
            lineno = pending[0]
            pending = None
        if raw.rstrip().endswith("\\"):
            pending = (lineno, raw.rstrip()[:-1])
            continue
        out.append((lineno, raw))
    if pending is not None:
        out.append(pending)
    return out


def parse_lines(lines: list[str], rel: str, *, base: Path, root: Path, _seen: frozenset[Path] = frozenset(),
                _out: Requirements | None = None, _as_constraints: bool = False) -> Requirements:
    """The lines of one requirements file (``rel`` names it in messages; ``base`` resolves its paths)."""
    out = _out if _out is not None else Requirements([], [], "", [], [])
    assert out.extra_index_urls is not None and out.bundled_wheels is not None
    for lineno, raw in _logical_lines(lines):
        where = f"{rel}:{lineno}"
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        # pip's per-requirement hash options: lockbuild pins by its own resolution, uv checks hashes
        line = re.sub(r"\s+--hash[=\s]\s*\S+", "", line).strip()
        if not line:
            continue
        if m := re.match(r"^(-r|--requirement|-c|--constraint)\s*=?\s*(\S.*)$", line):
            include = (base / m.group(2).strip()).resolve()
            if not _inside(include, root):
                raise _bad(where, f"`{line}` includes {include}, which is outside the model directory",
                           "copy that file into the model (next to requirements.txt) and refer to it by a "
                           "relative path, or list its requirements in [python] requirements in lockbuild.toml")
            constraint = m.group(1) in ("-c", "--constraint")
            parse_requirements(include, root=root, _seen=_seen, _out=out,
                               _as_constraints=_as_constraints or constraint)
            continue
        if m := re.match(r"^(-i|--index-url|--extra-index-url)(?:\s+|\s*=\s*)(\S+)$", line):
            url = strip_userinfo(m.group(2))
            if m.group(1) == "--extra-index-url":
                if url not in out.extra_index_urls:
                    out.extra_index_urls.append(url)
            else:
                out.index_url = url
            continue
        if re.match(r"^(-e|--editable)\b", line):
            raise _bad(where, f"editable requirement `{line}` cannot be locked",
                       "log the model with a released version (name==X) or build a wheel and bundle it with "
                       "mlflow.models.add_libraries_to_model")
        if line.startswith("-"):
            continue  # other pip options (--prefer-binary, --trusted-host, ...): resolution is lockbuild's
        target = line.split("@", 1)[1].strip() if re.match(r"^[A-Za-z0-9._-]+(\[[^\]]*\])?\s*@", line) else line
        if _URL_REQ.match(target):
            raise _bad(where, f"`{line}` is a VCS/URL requirement, which cannot be pinned by sha256",
                       "log the model with a released version (name==X), or build a wheel and bundle it with "
                       "mlflow.models.add_libraries_to_model")
        if target.endswith(".whl") or "/" in target or target.startswith("."):
            local = (base / target).resolve()
            if not _inside(local, root):
                raise _bad(where, f"`{line}` points at {local}, outside the model directory",
                           "bundle the wheel into the model (mlflow.models.add_libraries_to_model) or pin a "
                           "released version")
            if not (target.endswith(".whl") and local.is_file()):
                raise _bad(where, f"`{line}` is a local path, not a wheel file in the model",
                           "build a wheel and bundle it with mlflow.models.add_libraries_to_model, or pin a "
                           "released version")
            wrel = local.relative_to(root).as_posix()
            if wrel not in out.bundled_wheels:
                out.bundled_wheels.append(wrel)
            continue
        from packaging.requirements import InvalidRequirement, Requirement

        try:
            Requirement(line)
        except InvalidRequirement as e:
            raise _bad(where, f"`{line}` is not a valid requirement: {str(e).splitlines()[0]}",
                       "fix the line, or drop it and list the package in [python] requirements") from None
        (out.constraints if _as_constraints else out.requirements).append(line)
    return out


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
    parsed = Requirements([], [], "", [], [])
    if (path / "requirements.txt").is_file():
        parsed = parse_requirements(path / "requirements.txt", root=path)
        reqs, cons = parsed.requirements, parsed.constraints
        env_source = "requirements.txt"
    if (path / "constraints.txt").is_file() and not cons:
        cons = parse_requirements(path / "constraints.txt", root=path).requirements
    virtualenv = env_files.get("virtualenv")
    if virtualenv and (path / virtualenv).is_file():
        pe = _load_yaml(path / virtualenv) or {}
        python_version = python_scalar(pe.get("python", ""), path / virtualenv, "python")
    conda_file = env_files.get("conda") or "conda.yaml"
    if (path / conda_file).is_file():
        conda_py, conda_pip = _python_from_conda(_load_yaml(path / conda_file))
        python_version = python_version or conda_py
        if not env_source and conda_pip:
            # pip lines nested in conda.yaml (older MLflow): the same rules as requirements.txt
            parsed = parse_lines(conda_pip, f"{conda_file} (dependencies: pip: item)", base=path,
                                 root=path.resolve())
            reqs, cons = parsed.requirements, parsed.constraints
            env_source = conda_file
    python_version = python_version or python_scalar(pyfunc.get("python_version", ""), mlmodel_path, "flavors",
                                                     "python_function", "python_version")
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
    assert parsed.extra_index_urls is not None and parsed.bundled_wheels is not None
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
        index_url=parsed.index_url,
        extra_index_urls=tuple(parsed.extra_index_urls),
        bundled_wheels=tuple(parsed.bundled_wheels),
    )
