"""Python resolution with uv, for the exact target: one sha256-pinned wheel per distribution.

Inputs: the model's logged requirements (``mlflow==X`` rewritten to the serving runtime), the
serving runtime itself, and the spec's extras. uv resolves for the target platform
(``--python-platform x86_64-manylinux_2_36``, derived from the locked glibc) and the exact
interpreter version, wheels only, with an ``--exclude-newer`` cutoff that the lock records.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import tomlkit
from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from lockbuild.errors import ResolveError
from lockbuild.lock.model import Sdist, Wheel
from lockbuild.model.metadata import strip_userinfo

# Names that all write site-packages/mlflow/: the serving runtime must be exactly one of them.
MLFLOW_DISTS = {"mlflow", "mlflow-skinny", "mlflow-tracing"}


@dataclass(frozen=True)
class PythonTarget:
    python: str  # exact, e.g. 3.11.2
    wheel_platform: str  # e.g. x86_64-manylinux_2_36

    @property
    def minor(self) -> tuple[int, int]:
        v = Version(self.python)
        return v.major, v.minor


def uv_bin() -> str:
    from uv import find_uv_bin

    return str(find_uv_bin())


def serving_server(wheels: list[Wheel]) -> str | None:
    """Which server the locked MLflow's scoring server runs on: recent MLflow (2.2x, 3.x) ships a
    FastAPI app and depends on uvicorn; older MLflow 2 ships a Flask app served by gunicorn."""
    names = {w.name for w in wheels}
    if "uvicorn" in names and "fastapi" in names:
        return "uvicorn"
    if "gunicorn" in names and "flask" in names:
        return "gunicorn"
    return None


# Known serve-time incompatibilities the logged requirements do not rule out. Each entry:
# (applies to MLflow versions, extra requirement, why).
COMPAT_CONSTRAINTS: list[tuple[str, str, str]] = [
    ("<3", "starlette<1", "MLflow 2's FastAPI scoring server uses app.route, which Starlette 1.0 removed"),
]


def runtime_requirements(serving: str, mlflow_version: str, *, flask: bool = False) -> list[str]:
    """What MLflow's scoring server needs beyond the model's own requirements."""
    from packaging.specifiers import SpecifierSet

    reqs = [f"{serving}=={mlflow_version}", "pandas", "numpy"]
    reqs += ["flask", "gunicorn"] if flask else []
    for applies, extra, _why in COMPAT_CONSTRAINTS:
        if Version(mlflow_version) in SpecifierSet(applies):
            reqs.append(extra)
    return reqs


def model_requirements(logged: list[str] | tuple[str, ...], *, serving: str, exclude: tuple[str, ...]) -> list[str]:
    """The logged requirements with every mlflow* pin mapped onto the serving distribution.

    MLflow writes ``mlflow==X`` into requirements.txt even when only mlflow-skinny was
    installed; `mlflow` and `mlflow-skinny` both write site-packages/mlflow/, so exactly one
    of them may be installed.
    """
    excluded = {canonicalize_name(e) for e in exclude}
    out = []
    for line in logged:
        try:
            req = Requirement(line)
        except InvalidRequirement as e:
            raise ResolveError(f"the model's requirement {line!r} is not valid: {e}",
                               hint="fix requirements.txt or exclude it with [python] exclude") from None
        name = canonicalize_name(req.name)
        if name in excluded:
            continue
        if name in MLFLOW_DISTS:
            continue  # the runtime pins the serving distribution at the model's MLflow version
        out.append(line)
    return out


def target_tags(t: PythonTarget) -> list[Tag]:
    """Wheel tags the target accepts, most preferred first."""
    arch, _, rest = t.wheel_platform.partition("-")
    m = re.match(r"manylinux_(\d+)_(\d+)", rest)
    if not m:
        raise ResolveError(f"unsupported wheel platform {t.wheel_platform!r}")
    major, minor = int(m.group(1)), int(m.group(2))
    platforms = [f"manylinux_{major}_{n}_{arch}" for n in range(minor, 4, -1)]
    for legacy, needs in (("manylinux2014", 17), ("manylinux2010", 12), ("manylinux1", 5)):
        if minor >= needs:
            platforms.append(f"{legacy}_{arch}")
    py = t.minor
    return list(cpython_tags(py, platforms=platforms)) + list(compatible_tags(py, platforms=platforms))


def wheel_filename(w: dict) -> str:
    """PEP 751 makes a wheel's `name` optional: it is then the URL's (or path's) last segment."""
    return str(w.get("name") or unquote(urlsplit(w.get("url") or w.get("path") or "").path.rsplit("/", 1)[-1]))


def pick_wheel(wheels: list[dict], tags: list[Tag]) -> dict | None:
    rank = {tag: i for i, tag in enumerate(tags)}
    best: tuple[int, dict] | None = None
    for w in wheels:
        _, _, _, wtags = parse_wheel_filename(wheel_filename(w))
        score = min((rank[t] for t in wtags if t in rank), default=None)
        if score is not None and (best is None or score < best[0]):
            best = (score, w)
    return best[1] if best else None


def uv_compile(requirements: list[str], constraints: list[str], *, target: PythonTarget, index_url: str,
               exclude_newer: str, workdir: Path, extra_index_urls: tuple[str, ...] = (),
               find_links: tuple[str, ...] = (), only_binary: bool = True, no_binary: tuple[str, ...] = (),
               overrides: list[str] | None = None) -> str:
    """Run uv; return the pylock.toml text. uv's own explanation becomes the error message.

    Wheels only (``only_binary``), except the packages in ``no_binary``: those have no wheel for the
    target and are built from their sdist (lockbuild.fetch.sdist). Index credentials are never on
    the command line: uv reads them from netrc."""
    req_in = workdir / "requirements.in"
    req_in.write_text("\n".join(requirements) + "\n")
    out = workdir / "pylock.toml"
    out.unlink(missing_ok=True)
    cmd = [
        uv_bin(), "pip", "compile", str(req_in),
        "--python-platform", target.wheel_platform,
        "--python-version", target.python,
        *(["--only-binary", ":all:"] if only_binary else []),
        *[a for name in no_binary for a in ("--no-binary", name)],
        "--generate-hashes",
        "--exclude-newer", exclude_newer,
        "--index-url", index_url,
        *[a for url in extra_index_urls for a in ("--extra-index-url", url)],
        *[a for d in find_links for a in ("--find-links", d)],
        "--format", "pylock.toml",
        "--no-header", "--quiet",
        "--output-file", str(out),
    ]
    if constraints:
        con = workdir / "constraints.txt"
        con.write_text("\n".join(constraints) + "\n")
        cmd += ["--constraint", str(con)]
    if overrides:  # lockbuild.resolve.overlap: drop a variant name everywhere
        ovr = workdir / "overrides.txt"
        ovr.write_text("\n".join(overrides) + "\n")
        cmd += ["--override", str(ovr)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_"))}
    env["UV_NO_CONFIG"] = "1"
    env.setdefault("UV_CACHE_DIR", str(Path(os.environ.get("LOCKBUILD_CACHE", Path.home() / ".cache/lockbuild"))
                                       / "uv"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
    if proc.returncode != 0:
        explanation = proc.stderr.strip() or proc.stdout.strip()
        raise ResolveError(
            f"uv could not resolve the Python environment for {target.wheel_platform}, Python {target.python}:\n"
            f"{explanation}",
            hint="pin a version that has a wheel for this platform in [python] requirements, drop the "
            "requirement with [python] exclude, or change [target] platform",
        )
    return out.read_text()


@dataclass(frozen=True)
class SdistPin:
    """A package the target has no wheel for: its sdist, to be built at lock time."""

    name: str
    version: str
    sdist: Sdist


def source_only(text: str, tags: list[Tag]) -> list[str]:
    """Names in a pylock (resolved with sdists allowed) that have an sdist but no wheel for the target."""
    doc = tomlkit.parse(text).unwrap()
    return sorted(canonicalize_name(p["name"]) for p in doc.get("packages", [])
                  if p.get("sdist") and pick_wheel(p.get("wheels") or [], tags) is None)


def parse_pylock(text: str, tags: list[Tag], platform: str, *,
                 sdist_ok: frozenset[str] = frozenset(),
                 bundled: frozenset[str] = frozenset()) -> tuple[list[Wheel], list[SdistPin]]:
    """Wheels (and sdists of ``sdist_ok`` packages) from uv's pylock; ``bundled`` names come from the
    model's own files instead (uv saw them through --find-links)."""
    doc = tomlkit.parse(text).unwrap()
    wheels: list[Wheel] = []
    sdists: list[SdistPin] = []
    for pkg in doc.get("packages", []):
        name = canonicalize_name(pkg["name"])
        if name in bundled:
            continue
        # index wheels only: a local file uv saw through --find-links (the model's wheels/) is used
        # only for a bundled name, never recorded as a file:// URL of this machine
        candidates = [c for c in pkg.get("wheels") or []
                      if c.get("url") and not str(c["url"]).startswith("file:") and not c.get("path")]
        sd = pkg.get("sdist")
        if name in sdist_ok and sd and pick_wheel(candidates, tags) is None:
            sha = (sd.get("hashes") or {}).get("sha256")
            if not sha or "size" not in sd or not sd.get("url"):
                raise ResolveError(f"uv returned no url/sha256/size for the sdist of {name}")
            url = strip_userinfo(str(sd["url"]))
            sdists.append(SdistPin(name, str(pkg["version"]), Sdist(
                filename=unquote(urlsplit(url).path.rsplit("/", 1)[-1]), url=url, size=int(sd["size"]),
                sha256=sha)))
            continue
        if not candidates:
            raise ResolveError(
                f"{name} {pkg.get('version')} has no wheel (only an sdist) for {platform}",
                hint=f"pin a version of {name} that publishes a wheel, or exclude it",
            )
        w = pick_wheel(candidates, tags)
        if w is None:
            have = ", ".join(sorted({t for c in candidates for t in _platforms(wheel_filename(c))}))
            raise ResolveError(
                f"{name} {pkg.get('version')} has no wheel for {platform} (wheels exist for: {have})",
                hint=f"pin another {name} version or change [target] platform",
            )
        sha = (w.get("hashes") or {}).get("sha256")
        if not sha or "size" not in w:
            raise ResolveError(f"uv returned no sha256/size for {wheel_filename(w)}")
        wheels.append(Wheel(name=name, version=str(pkg["version"]), filename=wheel_filename(w),
                            url=strip_userinfo(str(w.get("url") or "")), size=int(w["size"]), sha256=sha))
    return sorted(wheels, key=lambda w: w.name), sorted(sdists, key=lambda s: s.name)


def _platforms(filename: str) -> set[str]:
    return {t.platform for t in parse_wheel_filename(filename)[3]}


@dataclass(frozen=True)
class BundledWheel:
    """A wheel shipped inside the model (mlflow.models.add_libraries_to_model), already hashed."""

    path: str  # relative to the model root
    local: Path  # where it is on disk now
    size: int
    sha256: str


def bundled_wheel_pins(bundled: tuple[BundledWheel, ...], tags: list[Tag], platform: str) -> list[Wheel]:
    out = []
    for b in bundled:
        filename = b.path.rsplit("/", 1)[-1]
        try:
            name, version, _build, wtags = parse_wheel_filename(filename)
        except Exception as e:
            raise ResolveError(f"the model's bundled wheel {b.path} has an invalid file name: {e}") from None
        if not set(wtags) & set(tags):
            raise ResolveError(
                f"the model's bundled wheel {b.path} does not install on {platform} "
                f"(tags {', '.join(sorted(str(t) for t in wtags))})",
                hint="bundle the libraries on a machine matching the target (add_libraries_to_model), or "
                "drop the wheel line from requirements.txt and pin the package in [python] requirements",
            )
        if canonicalize_name(name) in MLFLOW_DISTS:
            continue  # like an mlflow* requirement line: the runtime pins the serving distribution
        out.append(Wheel(name=canonicalize_name(name), version=str(version), filename=filename, url="",
                         size=b.size, sha256=b.sha256, source="model", path=b.path))
    return out


Notify = Callable[[str], None]


def resolve_python(requirements: list[str], constraints: list[str], *, target: PythonTarget, index_url: str,
                   exclude_newer: str, extra_index_urls: tuple[str, ...] = (),
                   bundled: tuple[BundledWheel, ...] = (), cache: object = None, epoch: int = 0,
                   notify: Notify = lambda _m: None, overrides: list[str] | None = None) -> list[Wheel]:
    """Resolve to one pinned wheel per distribution: from the index, from the model (bundled wheels,
    pinned at their version so the rest resolves around them), or built from an sdist when the
    target has no wheel at all (only then: everything else stays wheels-only)."""
    tags = target_tags(target)
    pins = bundled_wheel_pins(bundled, tags, target.wheel_platform)
    reqs = list(requirements) + [f"{w.name}=={w.version}" for w in pins]
    links = tuple(sorted({str(b.local.parent) for b in bundled}))
    with tempfile.TemporaryDirectory(prefix="lockbuild-uv-") as d:

        def compile_(only_binary: bool = True, no_binary: tuple[str, ...] = ()) -> str:
            return uv_compile(reqs, constraints, target=target, index_url=index_url, exclude_newer=exclude_newer,
                              workdir=Path(d), extra_index_urls=extra_index_urls, find_links=links,
                              only_binary=only_binary, no_binary=no_binary, overrides=overrides)

        sdist_ok: frozenset[str] = frozenset()
        try:
            text = compile_()
        except ResolveError as strict:
            try:
                loose = compile_(only_binary=False)
            except ResolveError:
                raise strict from None
            sdist_ok = frozenset(source_only(loose, tags)) - {w.name for w in pins}
            if not sdist_ok:
                raise strict from None
            notify(f"no wheel for {target.wheel_platform}: {', '.join(sorted(sdist_ok))}; building from sdist")
            text = compile_(no_binary=tuple(sorted(sdist_ok)))
    wheels, sdists = parse_pylock(text, tags, target.wheel_platform, sdist_ok=sdist_ok,
                                  bundled=frozenset(w.name for w in pins))
    by_name = {w.name: w for w in wheels}
    for w in pins:
        by_name[w.name] = w  # the model's own bytes, whatever the index has under that version
    if sdists:
        from lockbuild.resolve.sdist import lock_source_build

        for pin in sdists:
            notify(f"building {pin.name} {pin.version} from {pin.sdist.filename}")
            by_name[pin.name] = lock_source_build(pin, target=target, index_url=index_url,
                                                  extra_index_urls=extra_index_urls, exclude_newer=exclude_newer,
                                                  cache=cache, epoch=epoch)
    result = sorted(by_name.values(), key=lambda w: w.name)
    check_single_mlflow(result)
    return result


def check_single_mlflow(wheels: list[Wheel]) -> None:
    """mlflow, mlflow-skinny and mlflow-tracing share site-packages/mlflow/: one version only."""
    present = {w.name: w.version for w in wheels if w.name in MLFLOW_DISTS}
    if len(set(present.values())) > 1:
        both = ", ".join(f"{k}=={v}" for k, v in sorted(present.items()))
        raise ResolveError(
            f"the environment would contain {both}: all write site-packages/mlflow/, at different versions",
            hint='choose one with [python] serving = "mlflow-skinny" or "mlflow", and drop the other from '
            "[python] requirements",
        )
