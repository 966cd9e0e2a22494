"""Read what an MLflow model says about itself: MLmodel, python_env.yaml, requirements.txt
(with -r/-c includes and constraints.txt), conda.yaml as the fallback.

Slightly over ~350 lines on purpose: the requirement-line rules (includes inside the model only,
index lines without credentials, bundled wheels, refused -e/VCS/URL lines) and the symlink rules
are the model's trust boundary and read best next to the reader that applies them."""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import InvalidRequirement, Requirement

from lockbuild.errors import ModelError, RequirementsError
from lockbuild.fsutil import sha256_bytes, tree_digest, tree_files


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
    # env files whose URL credentials were removed: (path, what was removed); `rewritten` holds
    # the bytes lock records, caches and puts into the image instead of the file on disk
    rewrites: tuple[tuple[str, str], ...] = ()
    rewritten: tuple[tuple[str, bytes], ...] = ()
    hash_pins: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (normalized name, allowed sha256s) from --hash=
    notes: tuple[str, ...] = ()  # pip options lockbuild does not apply, named with file:line


@functools.lru_cache(maxsize=1 << 17)
def requirement(line: str) -> Requirement:
    """``packaging.requirements.Requirement(line)``, parsed once per distinct line: lock reads every logged
    line in several places (the reader, the serving runtime, overlaps, doctor), and the parser costs
    ~40 µs a line (a 50,000-line requirements file). Callers must not mutate the result."""
    return Requirement(line)


def keras_major(requirements: tuple[str, ...] | list[str], saved_format: str) -> int | None:
    """Which Keras the model was saved with. MLflow's `keras_version` field holds tf.__version__,
    so it cannot tell; the pinned keras / tf-keras requirement and the saved format can."""
    from packaging.utils import canonicalize_name

    for line in requirements:
        try:
            req = requirement(line)
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


YAML_MAX_BYTES = 16 << 20  # an MLflow env file is a few KB


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases (a billion-laughs file expands to GBs when its items are
    read) and without duplicate keys (PyYAML keeps the last one silently). MLflow never writes either."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases (*name) are not accepted in model files", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if dup:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_text(path: Path, rel: str) -> str:
    """A model text file as UTF-8, refused with the file and byte offset when it is not."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ModelError(f"model file {rel} is a directory, not a file", where=str(path)) from None
    except OSError as e:
        raise ModelError(f"model file {rel} cannot be read: {e.strerror or e}", where=str(path)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ModelError(f"model file {rel} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}, "
                         f"line {line})", where=f"{path}:{line}",
                         hint="re-save it as UTF-8 (MLflow writes UTF-8), or re-log the model") from None


def _parse_yaml(text: str, rel: str, path: Path) -> Any:
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        first = str(e).strip().splitlines()
        problem = getattr(e, "problem", None) or (first[0] if first else "invalid YAML")
        raise ModelError(f"cannot parse {rel}: {problem}", where=where,
                         hint="fix the file (plain YAML as MLflow writes it), or re-log the model") from None
    except RecursionError:
        raise ModelError(f"cannot parse {rel}: nested too deeply", where=str(path),
                         hint="re-log the model") from None


def _shape(value: Any, kind: type | tuple[type, ...], rel: str, key: str, path: Path, expected: str) -> Any:
    """``value`` if it is a ``kind``; else a ModelError naming the file and key."""
    if isinstance(value, kind) and not isinstance(value, bool):
        return value
    got = "nothing" if value is None else type(value).__name__
    raise ModelError(f"{rel}: `{key}` must be {expected}, not {got} ({str(value)[:60]!r})", where=str(path),
                     hint="fix the file as MLflow writes it, or re-log the model")


_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/@'\"]+)@")


def has_credentials(text: str) -> bool:
    return _USERINFO.search(text) is not None


def scrub_credentials(text: str) -> str:
    """``text`` with every URL's ``user[:password]@`` removed (the one rewrite lockbuild applies to a
    model file: the lock, cache and image carry the result, never the credential)."""
    return _USERINFO.sub(lambda m: m.group("scheme"), text)


def redact(text: str) -> str:
    """For messages: URL userinfo shown as ``***``."""
    return _USERINFO.sub(lambda m: m.group("scheme") + "***@", text)


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

    requirements: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    index_url: str = ""
    extra_index_urls: list[str] = field(default_factory=list)
    bundled_wheels: list[str] = field(default_factory=list)  # model-relative wheel paths
    rewrites: dict[str, bytes] = field(default_factory=dict)  # model-relative path -> bytes without credentials
    hash_pins: dict[str, list[str]] = field(default_factory=dict)  # normalized name -> sha256:<hex> allowed
    notes: list[str] = field(default_factory=list)  # options named but not applied


# pip options that change what pip would install and that lockbuild does not apply: said in a note
# (file:line), never dropped silently. Options with no effect on the result (--prefer-binary,
# --trusted-host, --no-cache-dir, ...) are ignored.
_NOTED_OPTIONS = {
    "--pre": "pre-releases are chosen only when a requirement names one (uv's default); pin the version",
    "-f": "lockbuild resolves from the index only (and the model's bundled wheels)",
    "--find-links": "lockbuild resolves from the index only (and the model's bundled wheels)",
    "--no-binary": "lockbuild installs wheels; a package without one for the target is built from its sdist",
    "--only-binary": "lockbuild installs wheels only already",
    "--no-index": "lockbuild resolves from the index (netrc for a private one) and the bundled wheels",
    "--use-feature": "pip features do not apply to lockbuild's resolution",
    "--config-settings": "build settings are not applied; sdists build with their defaults",
    "--global-option": "build settings are not applied; sdists build with their defaults",
    "--install-option": "build settings are not applied; sdists build with their defaults",
    "--require-hashes": "lockbuild pins every file by sha256; --hash= values given are enforced",
}
_IGNORED_OPTIONS = {"--prefer-binary", "--trusted-host", "--no-cache-dir", "--progress-bar", "--upgrade",
                    "-U", "--upgrade-strategy", "--user", "--no-deps", "--no-build-isolation", "--quiet", "-q",
                    "--verbose", "-v", "--disable-pip-version-check", "--timeout", "--retries", "--no-color"}
_HASH = re.compile(r"\s*--hash(?:=|\s+)(\S+)")
_URL_REQ = re.compile(r"^(git\+|hg\+|svn\+|bzr\+|https?://|file:|ftp://)", re.I)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _bad(where: str, message: str, hint: str) -> RequirementsError:
    return RequirementsError(message, where=where, hint=hint)


def parse_requirements(path: Path, *, root: Path | None = None, _seen: frozenset[Path] = frozenset(),
                       _out: Requirements | None = None, _as_constraints: bool = False) -> Requirements:
    """Parse a pip requirements file the way MLflow writes them (and users edit them).

    ``root`` is the model directory: -r/-c includes and wheel paths must stay inside it. Lines
    pip would accept but lockbuild cannot pin (-e, VCS, URLs, local paths outside the model)
    are refused with the file and line, never dropped silently. URL credentials are removed
    before anything else reads the text (``Requirements.rewrites`` holds the file without them)."""
    path = _resolve(path, root or path.parent)
    root = (root or path.parent).resolve()
    out = _out if _out is not None else Requirements()
    if path in _seen:
        return out
    rel = path.relative_to(root).as_posix() if _inside(path, root) else str(path)
    if not path.exists():
        raise ModelError(f"{rel} is referenced but missing", where=str(path))
    text = read_text(path, rel)
    if has_credentials(text):
        text = scrub_credentials(text)
        out.rewrites[rel] = text.encode("utf-8")
    return parse_lines(text.splitlines(), rel, base=path.parent, root=root, _seen=_seen | {path}, _out=out,
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
    out = _out if _out is not None else Requirements()
    plain: dict[str, str] = {}  # raw line -> the requirement it was read as (a file may repeat a line)
    for lineno, text in _logical_lines(lines):
        if text in plain:
            (out.constraints if _as_constraints else out.requirements).append(plain[text])
            continue
        where = f"{rel}:{lineno}"
        raw = scrub_credentials(text)  # lines from conda.yaml's pip list arrive here unscrubbed
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        # pip's per-requirement hash pins: enforced after resolution (lock/create.py check_hash_pins)
        hashes = [h.strip() for h in _HASH.findall(line)]
        line = _HASH.sub("", line).strip()
        if not line:
            continue
        if m := re.match(r"^(-r|--requirement|-c|--constraint)\s*=?\s*(\S.*)$", line):
            include = _resolve(base / m.group(2).strip(), root)
            if not _inside(include, root):
                raise _bad(where, f"`{line}` includes {include}, which is outside the model directory",
                           "copy that file into the model (next to requirements.txt) and refer to it by a "
                           "relative path, or list its requirements in [python] requirements in lockbuild.toml")
            constraint = m.group(1) in ("-c", "--constraint")
            parse_requirements(include, root=root, _seen=_seen, _out=out,
                               _as_constraints=_as_constraints or constraint)
        elif line.startswith("-"):
            _option_line(line, where, out)
        elif not _local_wheel(line, where, base=base, root=root, out=out):
            _requirement_line(line, where, hashes, out, as_constraint=_as_constraints)
            if not hashes:
                plain[text] = line
    return out


def _option_line(line: str, where: str, out: Requirements) -> None:
    """An index line (kept without credentials), an editable (refused), or another pip option
    (ignored when it cannot change what is installed, else named in a note)."""
    if m := re.match(r"^(-i|--index-url|--extra-index-url)(?:\s+|\s*=\s*)(\S+)$", line):
        url = strip_userinfo(m.group(2))
        if m.group(1) != "--extra-index-url":
            out.index_url = url
        elif url not in out.extra_index_urls:
            out.extra_index_urls.append(url)
        return
    if re.match(r"^(-e|--editable)\b", line):
        raise _bad(where, f"editable requirement `{line}` cannot be locked",
                   "log the model with a released version (name==X) or build a wheel and bundle it with "
                   "mlflow.models.add_libraries_to_model")
    opt = re.split(r"[\s=]", line, maxsplit=1)[0]
    if opt not in _IGNORED_OPTIONS:  # those have no effect on which files are installed
        why = _NOTED_OPTIONS.get(opt, "lockbuild does not apply this pip option")
        out.notes.append(f"{where}: `{line}` is not applied: {why}")


def _local_wheel(line: str, where: str, *, base: Path, root: Path, out: Requirements) -> bool:
    """A line naming a file (a wheel bundled in the model: recorded; a VCS/URL requirement, a path
    outside the model or not a wheel: refused). False for a plain requirement."""
    target = line.split("@", 1)[1].strip() if re.match(r"^[A-Za-z0-9._-]+(\[[^\]]*\])?\s*@", line) else line
    if _URL_REQ.match(target):
        raise _bad(where, f"`{line}` is a VCS/URL requirement, which cannot be pinned by sha256",
                   "log the model with a released version (name==X), or build a wheel and bundle it with "
                   "mlflow.models.add_libraries_to_model")
    if not (target.endswith(".whl") or "/" in target or target.startswith(".")):
        return False
    local = _resolve(base / target, root)
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
    return True


def _requirement_line(line: str, where: str, hashes: list[str], out: Requirements, *, as_constraint: bool) -> None:
    """A PEP 508 requirement (or constraint), with its ``--hash`` pins checked to be sha256."""
    try:
        req = requirement(line)
    except InvalidRequirement as e:
        raise _bad(where, f"`{line}` is not a valid requirement: {str(e).splitlines()[0]}",
                   "fix the line, or drop it and list the package in [python] requirements") from None
    if hashes:
        from packaging.utils import canonicalize_name

        pins = out.hash_pins.setdefault(canonicalize_name(req.name), [])
        for h in hashes:
            algo, _, hexd = h.partition(":")
            if algo != "sha256" or not re.fullmatch(r"[0-9a-fA-F]{64}", hexd):
                raise _bad(where, f"`--hash={h}` on {req.name} is not a sha256 pin",
                           "use --hash=sha256:<64 hex digits> (pip hash FILE), or drop the option")
            pins.append("sha256:" + hexd.lower())
    (out.constraints if as_constraint else out.requirements).append(line)


def _python_from_conda(conda: Any, rel: str, path: Path) -> tuple[str, list[str]]:
    if conda is None:
        return "", []
    _shape(conda, dict, rel, "(top level)", path, "a mapping")
    py = ""
    pip_reqs: list[str] = []
    deps = _shape(conda.get("dependencies") or [], list, rel, "dependencies", path, "a list")
    for i, dep in enumerate(deps):
        if isinstance(dep, str) and re.match(r"^python([=<>]|$)", dep):
            py = re.sub(r"^python=*", "", dep)
        elif isinstance(dep, dict) and "pip" in dep:
            items = _shape(dep["pip"] or [], list, rel, f"dependencies[{i}].pip", path, "a list of strings")
            for j, x in enumerate(items):
                pip_reqs.append(_shape(x, str, rel, f"dependencies[{i}].pip[{j}]", path, "a string"))
    return py, pip_reqs


def _resolve(p: Path, root: Path) -> Path:
    """p.resolve(), a symlink loop refused as a ModelError naming the path."""
    try:
        return p.resolve()
    except (RuntimeError, OSError) as e:  # 3.11 raises RuntimeError("Symlink loop ...")
        rel = p.relative_to(root).as_posix() if _inside(p, root) else str(p)
        raise ModelError(f"model path {rel} cannot be resolved: {e}", where=str(p),
                         hint="remove the symlink loop (replace the links by real files)") from None


def check_symlinks(root: Path) -> None:
    """Refuse symlinks that would make lockbuild read outside the model directory.

    A file symlink whose target stays inside the model directory is read as the file it names
    (the lock records its content; the image gets a regular file). A symlink out of the directory
    (absolute or via ..), a dangling one, a loop, and every directory symlink are refused.
    """
    import stat

    base = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames) + sorted(filenames):
            p = Path(dirpath, name)
            mode = p.lstat().st_mode
            if not (stat.S_ISLNK(mode) or stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise ModelError(f"model path {p.relative_to(root).as_posix()} is not a regular file (a pipe, "
                                 "socket or device)", where=str(p), hint="remove it from the model directory")
            if not stat.S_ISLNK(mode):
                continue
            rel = p.relative_to(root).as_posix()
            target = os.readlink(p)
            resolved = _resolve(p, root)
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
    if not _resolve(p, root).is_relative_to(root.resolve()):
        raise ModelError(f"model file {rel} resolves outside the model directory ({p.resolve()})", where=str(p),
                         hint="replace the link by a copy of the file inside the model directory")
    return p


def _env_file(root: Path, value: Any, key: str, mlmodel: Path) -> str:
    """A path the MLmodel's pyfunc `env` table names: a string, relative, inside the model directory
    (every file lock reads is a model file, hashed in the lock). Returns it relative to the model."""
    rel = _shape(value, str, "MLmodel", key, mlmodel, "a path relative to the model directory")
    p = root / rel
    base = root.resolve()
    if Path(rel).is_absolute() or not _resolve(p, root).is_relative_to(base):
        raise ModelError(f"MLmodel `{key}: {rel}` points outside the model directory", where=f"{mlmodel} [{key}]",
                         hint="lockbuild reads only files inside the model directory (they are hashed in the "
                         "lock): copy the file into the model and name it by a relative path, or re-log the model")
    return p.resolve().relative_to(base).as_posix()


def _mlflow_version(mlmodel: dict[str, Any], reqs: list[str], mlmodel_path: Path) -> str:
    """MLmodel's `mlflow_version` (the serving runtime is pinned at it), else the logged `mlflow==X` pin."""
    from packaging.version import InvalidVersion, Version

    value = mlmodel.get("mlflow_version")
    if value in (None, ""):
        for line in reqs:
            try:
                req = requirement(line)
            except InvalidRequirement:
                continue
            pins = [sp.version for sp in req.specifier if sp.operator == "=="]
            if req.name.lower() in ("mlflow", "mlflow-skinny") and pins:
                value = pins[0]
                break
        else:
            raise ModelError("MLmodel does not say which MLflow logged the model (no `mlflow_version`, no mlflow==X "
                             "requirement)", where=str(mlmodel_path),
                             hint="re-log the model with MLflow, or add mlflow_version: X.Y.Z to MLmodel")
    text = str(_shape(value, (str, int, float), "MLmodel", "mlflow_version", mlmodel_path, "a version such as 3.17.2"))
    try:
        Version(text)
    except InvalidVersion:
        raise ModelError(f"MLmodel: `mlflow_version: {text[:60]}` is not a version", where=str(mlmodel_path),
                         hint="re-log the model with MLflow (it writes e.g. mlflow_version: 3.17.2)") from None
    return text


class _Reader:
    """The model's YAML files read under the model's rules (size bound, UTF-8, credentials removed by
    a recorded rewrite: ``rewrites`` holds the bytes lockbuild hashes, caches and images instead)."""

    def __init__(self, path: Path) -> None:
        self.path, self.root = path, path.resolve()
        self.rewrites: dict[str, bytes] = {}

    def yaml(self, rel: str) -> Any:
        p = self.root / rel
        if p.is_file() and p.stat().st_size > YAML_MAX_BYTES:
            raise ModelError(f"model file {rel} is {p.stat().st_size} bytes, too big for an MLflow environment "
                             "file", where=str(p), hint="MLflow writes a few KB here: re-log the model")
        text = read_text(p, rel)
        if has_credentials(text):
            text = scrub_credentials(text)
            self.rewrites[rel] = text.encode("utf-8")
        return _parse_yaml(text, rel, p)


@dataclass
class _Env:
    """The environment a model logged: its requirements (as parsed), Python version and which file said so."""

    parsed: Requirements
    python_version: str = ""
    env_source: str = ""


def read_model(path: Path) -> ModelInfo:
    check_symlinks(path)
    reader = _Reader(path)
    mlmodel_path = path / "MLmodel"
    mlmodel = reader.yaml("MLmodel")
    flavors, pyfunc = _pyfunc_flavor(mlmodel, mlmodel_path)
    env_files, loader = _pyfunc_env(pyfunc, mlmodel_path)
    env = _logged_env(reader, env_files, pyfunc, mlmodel_path)
    parsed = env.parsed
    reader.rewrites.update(parsed.rewrites)
    files = _hashed_files(path, reader.rewrites)
    return ModelInfo(
        flavors=tuple(sorted(str(f) for f in flavors)),
        loader_module=loader,
        mlflow_version=_mlflow_version(mlmodel, parsed.requirements, mlmodel_path),
        python_version=env.python_version,
        keras_version=_keras_version(flavors),
        saved_format=_saved_format(path),
        requirements=tuple(parsed.requirements),
        constraints=tuple(parsed.constraints),
        env_source=env.env_source,
        files=tuple(files),
        tree_digest=tree_digest(files),
        input_example=_input_example(path, pyfunc),
        index_url=parsed.index_url,
        extra_index_urls=tuple(parsed.extra_index_urls),
        bundled_wheels=tuple(parsed.bundled_wheels),
        rewrites=tuple((p, "URL credentials (user:password@) removed") for p in sorted(reader.rewrites)),
        rewritten=tuple(sorted(reader.rewrites.items())),
        hash_pins=tuple(sorted((n, tuple(h)) for n, h in parsed.hash_pins.items())),
        notes=tuple(parsed.notes),
    )


def _pyfunc_flavor(mlmodel: Any, mlmodel_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """MLmodel's flavors and its python_function flavor (required: it is what the scoring server serves)."""
    if not isinstance(mlmodel, dict) or "flavors" not in mlmodel:
        raise ModelError("MLmodel has no flavors", where=str(mlmodel_path),
                         hint="MLmodel must be a YAML mapping with a `flavors` table: re-log the model")
    flavors = _shape(mlmodel["flavors"] or {}, dict, "MLmodel", "flavors", mlmodel_path, "a mapping")
    pyfunc = _shape(flavors.get("python_function") or {}, dict, "MLmodel", "flavors.python_function",
                    mlmodel_path, "a mapping")
    if not pyfunc:
        raise ModelError(
            "model has no python_function flavor, so MLflow's scoring server cannot serve it",
            where=str(mlmodel_path), hint="log the model with a flavor that adds python_function",
        )
    return flavors, pyfunc


def _pyfunc_env(pyfunc: dict[str, Any], mlmodel_path: Path) -> tuple[dict[str, Any], str]:
    """The pyfunc flavor's `env` table ({"conda": ..., "virtualenv": ...}) and its loader_module."""
    env_files = pyfunc.get("env") or {}
    if isinstance(env_files, str):
        env_files = {"conda": env_files}
    _shape(env_files, dict, "MLmodel", ENV_KEY, mlmodel_path, "a file name or a mapping of file names")
    loader = _shape(pyfunc.get("loader_module", ""), str, "MLmodel", "flavors.python_function.loader_module",
                    mlmodel_path, "a module name")
    return env_files, loader


ENV_KEY = "flavors.python_function.env"


def _logged_env(reader: _Reader, env_files: dict[str, Any], pyfunc: dict[str, Any], mlmodel_path: Path) -> _Env:
    """requirements.txt (+ constraints.txt), else conda.yaml's pip section; the Python version from
    python_env.yaml, conda.yaml or MLmodel. Refused when the model logged no environment or Python."""
    path = reader.path
    env = _Env(Requirements())
    if (path / "requirements.txt").is_file():
        env.parsed, env.env_source = parse_requirements(path / "requirements.txt", root=path), "requirements.txt"
    if (path / "constraints.txt").is_file() and not env.parsed.constraints:
        cparsed = parse_requirements(path / "constraints.txt", root=path)
        env.parsed.constraints = cparsed.requirements
        env.parsed.rewrites.update(cparsed.rewrites)
        env.parsed.notes.extend(cparsed.notes)
    env.python_version = _python_env_version(reader, env_files, mlmodel_path)
    _conda_env(reader, env, env_files, mlmodel_path)
    env.python_version = env.python_version or python_scalar(
        pyfunc.get("python_version", "") or "", mlmodel_path, "flavors", "python_function", "python_version")
    if not env.env_source:
        raise ModelError(
            "the model logged no environment (no requirements.txt, no pip section in conda.yaml)",
            where=str(path),
            hint="re-log the model with pip_requirements=..., or add the requirements to [python] "
            "requirements in lockbuild.toml",
        )
    if not env.python_version:
        raise ModelError(
            "the model does not say which Python it was logged with (python_env.yaml / conda.yaml)",
            where=str(path), hint='set [target] python = "3.X" in lockbuild.toml',
        )
    return env


def _python_env_version(reader: _Reader, env_files: dict[str, Any], mlmodel_path: Path) -> str:
    """`python:` of the virtualenv file the pyfunc env names (python_env.yaml), or ""."""
    path = reader.path
    if env_files.get("virtualenv") is None:  # a named file the model lacks: as if not named
        return ""
    venv_rel = _env_file(path, env_files["virtualenv"], f"{ENV_KEY}.virtualenv", mlmodel_path)
    if not venv_rel or not (reader.root / venv_rel).is_file():
        return ""
    pe = reader.yaml(venv_rel)
    if pe is None:
        return ""
    _shape(pe, dict, venv_rel, "(top level)", path / venv_rel, "a mapping")
    py = pe.get("python", "")
    if py in (None, ""):
        return ""
    _shape(py, (str, int, float), venv_rel, "python", path / venv_rel, "a version such as \"3.11.7\"")
    return python_scalar(py, path / venv_rel, "python")  # unquoted 3.10 is not 3.1


def _conda_env(reader: _Reader, env: _Env, env_files: dict[str, Any], mlmodel_path: Path) -> None:
    """conda.yaml (or the file the pyfunc env names): its Python when no other file said, and its pip
    lines when the model has no requirements.txt (older MLflow), under the same rules."""
    path = reader.path
    if env_files.get("conda") is not None:
        conda_rel = _env_file(path, env_files["conda"], f"{ENV_KEY}.conda", mlmodel_path)
    else:
        conda_rel = "conda.yaml"
    if not conda_rel or not (reader.root / conda_rel).is_file():
        return
    conda_py, conda_pip = _python_from_conda(reader.yaml(conda_rel), conda_rel, path / conda_rel)
    env.python_version = env.python_version or conda_py
    if not env.env_source and conda_pip:
        env.parsed = parse_lines(conda_pip, f"{conda_rel} (dependencies: pip: item)", base=path,
                                 root=reader.root, _out=env.parsed)
        env.env_source = conda_rel


def _keras_version(flavors: dict[str, Any]) -> str:
    tf = flavors.get("tensorflow") or flavors.get("keras") or {}
    return str(tf.get("keras_version", "") or "") if isinstance(tf, dict) else ""


def _saved_format(path: Path) -> str:
    """"keras" (a .keras file), "savedmodel" (a saved_model.pb) or ""."""
    if (path / "data" / "model.keras").is_file() or any(path.glob("data/**/*.keras")):
        return "keras"
    if any(path.glob("data/**/saved_model.pb")) or any(path.glob("**/saved_model.pb")):
        return "savedmodel"
    return ""


def _hashed_files(path: Path, rewrites: dict[str, bytes]) -> list[tuple[str, int, str]]:
    """(path, size, sha256) of every model file; a rewritten file as the bytes lockbuild carries."""
    files = []
    for rel_path, size, sha in tree_files(path):
        if rel_path in rewrites:  # the lock, cache and image carry the file without credentials
            size, sha = len(rewrites[rel_path]), sha256_bytes(rewrites[rel_path])
        files.append((rel_path, size, sha))
    return files


def _input_example(path: Path, pyfunc: dict[str, Any]) -> str | None:
    example = pyfunc.get("serving_input_example") or None
    if example is not None and not isinstance(example, str):
        example = None
    if example is None and (path / "serving_input_example.json").is_file():
        example = "serving_input_example.json"
    return example
