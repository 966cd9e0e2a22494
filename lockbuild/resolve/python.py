"""Python resolution with uv, for the exact target: one sha256-pinned wheel per distribution.

Inputs: the model's logged requirements (``mlflow==X`` rewritten to the serving runtime), the
serving runtime itself, and the spec's extras. uv resolves for the target platform
(``--python-platform x86_64-manylinux_2_36``, derived from the locked glibc) and the exact
interpreter version, wheels only, with an ``--exclude-newer`` cutoff that the lock records.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement
from packaging.tags import Tag
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from lockbuild.errors import ResolveError
from lockbuild.lockfile.model import Wheel
from lockbuild.model.metadata import requirement
from lockbuild.progress import Notify
from lockbuild.resolve.uv import (
    SIZE_UNKNOWN,
    PythonTarget,
    UvReport,
    parse_pylock,
    source_only,
    target_tags,
    uv_compile,
)

# Names that all write site-packages/mlflow/: the serving runtime must be exactly one of them.
MLFLOW_DISTS = {"mlflow", "mlflow-skinny", "mlflow-tracing"}


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
            req = requirement(line)
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


def resolve_python(requirements: list[str], constraints: list[str], *, target: PythonTarget, index_url: str,
                   exclude_newer: str, extra_index_urls: tuple[str, ...] = (),
                   bundled: tuple[BundledWheel, ...] = (), cache: object = None, epoch: int = 0,
                   notify: Notify = lambda _m: None, overrides: list[str] | None = None,
                   preferences: dict[str, str] | None = None, report: UvReport | None = None) -> list[Wheel]:
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
                              only_binary=only_binary, no_binary=no_binary, overrides=overrides,
                              preferences=preferences, report=report)

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
    wheels = _with_sizes(wheels, cache, notify)
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


def _with_sizes(wheels: list[Wheel], cache: object, notify: Notify) -> list[Wheel]:
    """Wheels whose index gave no size (a PEP 503 HTML index) downloaded, checked against their sha256,
    and given the verified file's size: the lock pins size and sha256 of every file."""
    unknown = [w for w in wheels if w.size == SIZE_UNKNOWN]
    if not unknown:
        return wheels
    from dataclasses import replace

    from lockbuild.fetch.cache import Cache
    from lockbuild.fetch.download import Item, fetch_all

    c = cache if isinstance(cache, Cache) else Cache()
    notify(f"the index gives no size for {', '.join(w.filename for w in unknown)}: downloading to pin it")
    paths = fetch_all(c, [Item((w.url,), w.sha256, None, w.filename) for w in unknown])
    sizes = {w.sha256: paths[w.sha256].stat().st_size for w in unknown}
    return [replace(w, size=sizes[w.sha256]) if w.size == SIZE_UNKNOWN else w for w in wheels]


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
