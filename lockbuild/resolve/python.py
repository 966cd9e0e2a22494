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
from dataclasses import dataclass
from pathlib import Path

import tomlkit
from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from lockbuild.errors import ResolveError
from lockbuild.lock.model import Wheel

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
    """PEP 751 makes a wheel's `name` optional: it is then the URL's last path segment."""
    from urllib.parse import unquote, urlsplit

    return str(w.get("name") or unquote(urlsplit(w["url"]).path.rsplit("/", 1)[-1]))


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
               exclude_newer: str, workdir: Path, overrides: list[str] | None = None) -> str:
    """Run uv; return the pylock.toml text. uv's own explanation becomes the error message."""
    req_in = workdir / "requirements.in"
    req_in.write_text("\n".join(requirements) + "\n")
    out = workdir / "pylock.toml"
    cmd = [
        uv_bin(), "pip", "compile", str(req_in),
        "--python-platform", target.wheel_platform,
        "--python-version", target.python,
        "--only-binary", ":all:",
        "--generate-hashes",
        "--exclude-newer", exclude_newer,
        "--index-url", index_url,
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


def parse_pylock(text: str, tags: list[Tag], platform: str) -> list[Wheel]:
    doc = tomlkit.parse(text).unwrap()
    wheels: list[Wheel] = []
    for pkg in doc.get("packages", []):
        name = canonicalize_name(pkg["name"])
        candidates = pkg.get("wheels") or []
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
        wheels.append(Wheel(name=name, version=str(pkg["version"]), filename=wheel_filename(w), url=w["url"],
                            size=int(w["size"]), sha256=sha))
    return sorted(wheels, key=lambda w: w.name)


def _platforms(filename: str) -> set[str]:
    return {t.platform for t in parse_wheel_filename(filename)[3]}


def resolve_python(requirements: list[str], constraints: list[str], *, target: PythonTarget, index_url: str,
                   exclude_newer: str, overrides: list[str] | None = None) -> list[Wheel]:
    with tempfile.TemporaryDirectory(prefix="lockbuild-uv-") as d:
        text = uv_compile(requirements, constraints, target=target, index_url=index_url,
                          exclude_newer=exclude_newer, workdir=Path(d), overrides=overrides)
    wheels = parse_pylock(text, target_tags(target), target.wheel_platform)
    check_single_mlflow(wheels)
    return wheels


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
