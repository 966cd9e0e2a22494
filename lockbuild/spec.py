"""Spec: load and validate lockbuild.toml into plain data.

Malformed TOML reports line and column; every schema violation names the table and key
(and the line it is on), and unknown keys are errors, never silently ignored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import tomlkit
import tomlkit.exceptions
from packaging.utils import canonicalize_name

from lockbuild.errors import SpecError
from lockbuild.lockfile.codec import DEFAULT_COMPRESSION

SPEC_FILE = "lockbuild.toml"
DEFAULT_PORT = 8080
DEFAULT_WORKERS = 1
DEFAULT_INDEX = "https://pypi.org/simple"


@dataclass(frozen=True)
class Spec:
    path: Path  # the spec file; relative paths in it are relative to its directory
    model_uri: str
    tracking_uri: str | None = None
    platform: str = "linux/amd64"
    python: str | None = None  # major.minor override
    base: str | None = None  # debian:<codename> override
    debian_packages: tuple[str, ...] = ()
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"
    keyrings: tuple[Path, ...] = ()  # [target] keyring, resolved; () = the Debian archive keyring
    requirements: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    omit: tuple[str, ...] = ()
    variants: tuple[tuple[str, str], ...] = ()  # (dropped, kept): requirements on dropped resolve to kept
    index_url: str = DEFAULT_INDEX
    exclude_newer: str | None = None
    allow_yanked: tuple[str, ...] = ()  # normalized names that may resolve to a yanked release
    serving: str = "mlflow-skinny"
    image_name: str = ""
    port: int = DEFAULT_PORT
    workers: int = DEFAULT_WORKERS
    env: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    compression: str = DEFAULT_COMPRESSION  # layers of the OCI layout / registry pushes (zstd; or gzip)
    smoke_input: str | None = None
    smoke_expected: str | None = None
    smoke_tolerance: float = 1e-5
    smoke_timeout: int = 180
    deploy: dict[str, Any] = field(default_factory=dict)
    bytecode: bool = True
    prune_defaults: bool = True
    prune: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict)  # validated plain dict, for the input digest

    @property
    def root(self) -> Path:
        return self.path.parent

    def resolve_path(self, rel: str) -> Path:
        return (self.root / rel).resolve()


def schema() -> dict[str, Any]:
    text = resources.files("lockbuild").joinpath("schemas/lockbuild.schema.json").read_text()
    return json.loads(text)


def _key_line(text: str, table: str | None, key: str | None) -> int | None:
    """Best-effort line number (1-based) of `key` inside `[table]`."""
    lines = text.splitlines()
    in_table = table is None
    for i, line in enumerate(lines, 1):
        s = line.strip()
        if s.startswith("["):
            m = re.match(r"^\[\[?([^\]]*)\]", s)  # the header name, without a trailing # comment
            name = re.sub(r'\s*\.\s*', ".", m.group(1).strip()).replace('"', "") if m else ""
            if table is None and key is not None and (name == key or name.startswith(key + ".")):
                return i  # an unknown top-level table
            in_table = table is not None and name == table
            if key is None and in_table:
                return i
            continue
        if in_table and key is not None and re.match(rf'^"?{re.escape(key)}"?\s*[=.]', s):
            return i
    return None


def _schema_error(path: Path, text: str, err: jsonschema.ValidationError) -> SpecError:
    parts = [str(p) for p in err.absolute_path]
    table = parts[0] if parts else None
    key = parts[1] if len(parts) > 1 else None
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        allowed = ", ".join(sorted(err.schema.get("properties", {})))
        where_table = ".".join(parts) if parts else None
        line = _key_line(text, where_table, extra[0]) if extra else None
        where = f"{path}:{line}" if line else str(path)
        scope = f"[{where_table}]" if where_table else "top level"
        return SpecError(
            f"unknown key {', '.join(repr(e) for e in extra)} in {scope}",
            hint=f"allowed keys there: {allowed}",
            where=where,
        )
    if err.validator == "required":
        scope = f"[{'.'.join(parts)}]" if parts else "the spec"
        return SpecError(f"{scope}: {err.message}", hint="see docs/spec.md for the keys", where=str(path))
    line = _key_line(text, ".".join(parts[:-1]), parts[-1]) if len(parts) > 2 else None  # [image.env] A
    line = line or _key_line(text, table, key)
    where = f"{path}:{line}" if line else str(path)
    dotted = ".".join(parts)
    return SpecError(f"[{table}] {key or ''}: {err.message}".replace(" :", ":"), hint=f"fix `{dotted}`",
                     where=where)


def _strings(value: Any, parts: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """Every string in the spec with its key path."""
    if isinstance(value, str):
        return [(parts, value)]
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in _strings(v, (*parts, str(k)))]
    if isinstance(value, list):
        return [x for v in value for x in _strings(v, parts)]
    return []


def _refuse_credentials(doc: dict[str, Any], text: str, path: Path) -> None:
    """No secret in the spec: its values reach the lock (and the lock reaches the image)."""
    from lockbuild.model.metadata import has_credentials, redact

    for parts, value in _strings(doc):
        if has_credentials(value):
            line = _key_line(text, ".".join(parts[:-1]) or None, parts[-1]) if len(parts) > 1 else None
            table, key = ".".join(parts[:-1]), parts[-1]
            raise SpecError(
                f"[{table}] {key}: `{redact(value)}` has credentials in its URL; a secret in the spec would "
                "reach the lock and the image", where=f"{path}:{line}" if line else str(path),
                hint="remove user:password@ from the URL and put the credentials in ~/.netrc (or $NETRC): "
                "`machine HOST login USER password TOKEN`; lockbuild and uv read it when they fetch")


def parse_spec(text: str, path: Path) -> Spec:
    try:
        doc = tomlkit.parse(text).unwrap()
    except tomlkit.exceptions.ParseError as e:
        raise SpecError(
            f"malformed TOML: {e}", hint="fix the syntax at that line and column",
            where=f"{path}:{e.line}:{e.col}",
        ) from None
    except tomlkit.exceptions.TOMLKitError as e:  # e.g. KeyAlreadyPresent: a key given twice
        import tomllib

        where = str(path)
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError as te:  # tomllib names the line and column
            if m := re.search(r"\(at line (\d+), column (\d+)\)", str(te)):
                where = f"{path}:{m.group(1)}:{m.group(2)}"
        raise SpecError(f"malformed TOML: {e}", hint="each key once per table: remove the repeated one",
                        where=where) from None
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        raise _schema_error(path, text, errors[0])
    _refuse_credentials(doc, text, path)
    cutoff = doc.get("python", {}).get("exclude-newer")
    if cutoff is not None:
        try:
            _normalize_time(cutoff)
        except ValueError as e:  # the schema checks the shape, not the calendar (month 13, Feb 30)
            line = _key_line(text, "python", "exclude-newer")
            raise SpecError(f"[python] exclude-newer: {cutoff!r} is not a valid date or time ({e})",
                            hint='use YYYY-MM-DD or RFC 3339, e.g. "2026-01-31" or "2026-01-31T12:00:00Z"',
                            where=f"{path}:{line}" if line else str(path)) from None
    return _from_dict(doc, path)


def _from_dict(doc: dict[str, Any], path: Path) -> Spec:
    model = doc["model"]
    target = doc.get("target", {})
    py = doc.get("python", {})
    image = doc.get("image", {})
    smoke = doc.get("smoke", {})
    build = doc.get("build", {})
    uri = model["uri"]
    name = image.get("name") or _default_image_name(uri, path)
    return Spec(
        path=path,
        model_uri=uri,
        tracking_uri=model.get("tracking-uri"),
        platform=target.get("platform", "linux/amd64"),
        python=target.get("python"),
        base=target.get("base"),
        debian_packages=tuple(target.get("packages", ())),
        mirror=target.get("mirror", Spec.mirror).rstrip("/"),
        security_mirror=target.get("security-mirror", Spec.security_mirror).rstrip("/"),
        keyrings=_keyrings(target.get("keyring"), path),
        requirements=tuple(py.get("requirements", ())),
        exclude=tuple(py.get("exclude", ())),
        omit=tuple(py.get("omit", ())),
        variants=tuple(sorted(py.get("variants", {}).items())),
        index_url=py.get("index-url", DEFAULT_INDEX),
        exclude_newer=_normalize_time(py["exclude-newer"]) if "exclude-newer" in py else None,
        allow_yanked=tuple(sorted({canonicalize_name(n) for n in py.get("allow-yanked", ())})),
        serving=py.get("serving", "mlflow-skinny"),
        image_name=name,
        port=image.get("port", DEFAULT_PORT),
        workers=image.get("workers", DEFAULT_WORKERS),
        env=tuple(sorted(image.get("env", {}).items())),
        labels=tuple(sorted(image.get("labels", {}).items())),
        compression=image.get("compression", DEFAULT_COMPRESSION),
        smoke_input=smoke.get("input"),
        smoke_expected=smoke.get("expected"),
        smoke_tolerance=float(smoke.get("tolerance", 1e-5)),
        smoke_timeout=int(smoke.get("timeout", 180)),
        deploy=dict(doc.get("deploy", {})),
        bytecode=bool(build.get("bytecode", True)),
        prune_defaults=bool(build.get("prune-defaults", True)),
        prune=tuple(build.get("prune", ())),
        keep=tuple(build.get("keep", ())),
        raw=doc,
    )


def _keyrings(value: str | list[str] | None, path: Path) -> tuple[Path, ...]:
    """[target] keyring: one path or a list, relative to the spec; each must be a file."""
    if value is None:
        return ()
    out = []
    for rel in [value] if isinstance(value, str) else value:
        p = (path.parent / rel).resolve()
        if not p.is_file():
            raise SpecError(f"[target] keyring: {rel!r} is not a file ({p})", where=str(path),
                            hint="point it at an OpenPGP keyring (`gpg --export KEY > archive.gpg`), relative "
                            "to lockbuild.toml, or remove it to use debian-archive-keyring")
        out.append(p)
    return tuple(out)


def _normalize_time(value: str) -> str:
    """Dates become midnight UTC; times keep their offset, rendered in UTC with a Z."""
    from datetime import UTC, datetime

    if len(value) == 10:
        value += "T00:00:00Z"
    dt = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _default_image_name(uri: str, path: Path) -> str:
    m = re.match(r"^models:/([^/@]+)", uri)
    base = m.group(1) if m else path.resolve().parent.name
    slug = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-") or "model"
    return f"lockbuild/{slug}"


def load_spec(path: Path) -> Spec:
    path = Path(path)
    if path.is_dir():
        path = path / SPEC_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(
            f"no spec at {path}", hint="run `lockbuild init --model URI` to write one, or pass --spec PATH"
        ) from None
    except UnicodeDecodeError as e:
        raise SpecError(f"spec is not UTF-8: {e}", where=str(path)) from None
    return parse_spec(text, path.resolve())


def render_spec(model_uri: str, *, tracking_uri: str | None, python: str | None, name: str | None,
                port: int = DEFAULT_PORT, workers: int = DEFAULT_WORKERS, python_note: str | None = None) -> str:
    """The text `lockbuild init` writes: commented, with defaults spelled out."""
    doc = tomlkit.document()
    doc.add(tomlkit.comment("lockbuild.toml — what to lock and build. Docs: docs/spec.md"))
    doc.add(tomlkit.nl())
    model = tomlkit.table()
    model.add("uri", model_uri)
    if tracking_uri:
        model.add("tracking-uri", tracking_uri)
    doc.add("model", model)
    target = tomlkit.table()
    target.add("platform", "linux/amd64")
    if python:
        target.add("python", python)
        target["python"].comment("what the model logged")
    elif python_note:
        for line in python_note.splitlines():
            target.add(tomlkit.comment(line))
    doc.add("target", target)
    pyt = tomlkit.table()
    pyt.add("serving", "mlflow-skinny")
    pyt.add("requirements", tomlkit.array())
    doc.add("python", pyt)
    image = tomlkit.table()
    if name:
        image.add("name", name)
    image.add("port", port)
    image.add("workers", workers)
    doc.add("image", image)
    return tomlkit.dumps(doc)
