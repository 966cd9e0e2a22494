"""The uv boundary: the exact target, uv's `pip compile` for it (pylock.toml out), and reading the
result (one wheel per distribution for the target's tags; sdist pins for packages without one).
resolve/python.py (the model's Python environment) and resolve/sdist.py (source-only packages and
their build requirements) both resolve through it."""

from __future__ import annotations

import functools
import re
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import tomlkit
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from lockbuild.digest import from_hex
from lockbuild.errors import ResolveError
from lockbuild.lockfile.model import Sdist, Wheel
from lockbuild.model.metadata import strip_userinfo
from lockbuild.resolve.uvcall import UvCall, uv_bin, uv_env

SIZE_UNKNOWN = -1  # a wheel's size the index did not give (PEP 503 HTML)


@dataclass(frozen=True)
class PythonTarget:
    python: str  # exact, e.g. 3.11.2
    wheel_platform: str  # e.g. x86_64-manylinux_2_36

    @property
    def minor(self) -> tuple[int, int]:
        v = Version(self.python)
        return v.major, v.minor


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


@dataclass
class UvReport:
    """What a uv_compile run says besides the pylock: its warnings (yanked releases, ...) and the
    packages whose index serves no upload times (the cutoff cannot apply to them)."""

    warnings: list[str] = field(default_factory=list)
    exempt: list[str] = field(default_factory=list)

    def yanked(self) -> dict[str, tuple[str, str]]:
        """{normalized name: (version, reason)} of the yanked releases uv chose."""
        out: dict[str, tuple[str, str]] = {}
        for line in self.warnings:
            if m := _YANKED.search(line):
                out[canonicalize_name(m.group(1))] = (m.group(2), m.group(3) or "yanked")
        return out


_YANKED = re.compile(r"`([A-Za-z0-9._-]+)==([^`]+)` is yanked(?: \(reason: \"(.*)\"\))?")
_NO_PUBLISH_TIME = re.compile(r"\b([A-Za-z0-9._-]+)(?:==\S+)? has no publish time")
_FILTERED = re.compile(r"`([A-Za-z0-9._-]+)` was filtered by `exclude-newer`")
MAX_EXEMPT_ROUNDS = 20


def no_upload_times(name: str, indexes: tuple[str, ...]) -> bool:
    """True when an index serving ``name`` gives no upload time for its files: a PEP 503 HTML page
    (which has none) or a JSON page (PEP 691/700) without `upload-time`. Credentials from netrc."""
    import json

    import httpx

    from lockbuild.fetch.download import client

    with client() as http:
        for index in indexes:
            if not index.startswith(("http://", "https://")):
                continue
            url = f"{index.rstrip('/')}/{canonicalize_name(name)}/"
            try:
                r = http.get(url, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
            except httpx.HTTPError:
                continue
            if r.status_code != 200:
                continue
            if "json" not in r.headers.get("content-type", ""):
                return True
            try:
                files = json.loads(r.content).get("files", [])
            except (ValueError, AttributeError):
                return True
            if any(isinstance(f, dict) and not f.get("upload-time") for f in files):
                return True
    return False


def classify_uv_failure(stderr: str, target: PythonTarget) -> Exception:
    """uv's failure as a lockbuild error whose message says what kind of failure it is and whose hint fits:
    network, authentication, disk, platform, cutoff, no wheel, or an unsatisfiable set."""
    from lockbuild.errors import FetchError

    text = stderr
    # uv's warnings come first and may name failures that did not decide the outcome (e.g. a managed
    # Python it could not download): the kind is read from its error and what follows
    at = text.find("error:")
    low = (text[at:] if at >= 0 else text).lower()
    where = f"{target.wheel_platform}, Python {target.python}"
    if any(k in low for k in ("401 unauthorized", "403 forbidden", "missing credentials", "authentication")):
        return FetchError(f"uv was refused by the package index (authentication) resolving for {where}:\n{text}",
                          hint="put the index credentials in ~/.netrc (or $NETRC): `machine HOST login USER "
                          "password TOKEN` (never in a URL: lockbuild refuses credentials in the spec and strips "
                          "them from the model)")
    if any(k in low for k in ("no space left on device", "disk quota exceeded", "read-only file system")):
        return ResolveError(f"uv could not write its cache or output (disk) resolving for {where}:\n{text}",
                            hint="free disk space in $LOCKBUILD_CACHE (uv's cache is its uv/ directory) or point "
                            "LOCKBUILD_CACHE at a writable disk with room")
    if any(k in low for k in ("error sending request", "connection refused", "dns error", "failed to lookup address",
                              "tcp connect error", "operation timed out", "timed out", "network is unreachable",
                              "could not connect", "failed to fetch")):
        return FetchError(f"uv could not reach the package index (network) resolving for {where}:\n{text}",
                          hint="check the network, a proxy (HTTPS_PROXY) and [python] index-url / the model's "
                          "index lines; then re-run `lockbuild lock`")
    if "python-platform" in low and ("invalid value" in low or "unknown" in low):
        said = "\n".join(ln for ln in text.splitlines() if "[possible values" not in ln).strip()
        return ResolveError(f"uv does not accept the target platform {target.wheel_platform}:\n{said}",
                            hint="set [target] platform/base to a supported target (docs/spec.md) or upgrade "
                            "lockbuild (its pinned uv knows the platform tags it accepts)")
    if "exclude-newer" in low or "no publish time" in low:
        return ResolveError(f"nothing uploaded before the lock's cutoff satisfies the requirements ({where}):\n{text}",
                            hint="the cutoff is [python] exclude-newer (or the previous lock's): move it later, "
                            "or run `lockbuild lock --upgrade` to resolve at the current time")
    if any(k in low for k in ("no wheels with a matching", "only has source distributions", "has no wheels",
                              "wheels are available for", "no source distribution", "wheels are required for")):
        return ResolveError(f"no wheel for {where}:\n{text}",
                            hint="pin a version that has a wheel for this platform in [python] requirements, drop "
                            "the requirement with [python] exclude, or change [target] platform")
    return ResolveError(f"uv could not resolve the Python environment for {where}:\n{text}",
                        hint="the requirements conflict: relax or change the pins uv names ([python] requirements "
                        "overrides a logged pin; [python] exclude drops one)")


def uv_compile(requirements: list[str], constraints: list[str], *, target: PythonTarget, index_url: str,
               exclude_newer: str, workdir: Path, extra_index_urls: tuple[str, ...] = (),
               find_links: tuple[str, ...] = (), only_binary: bool = True, no_binary: tuple[str, ...] = (),
               overrides: list[str] | None = None, report: UvReport | None = None,
               preferences: dict[str, str] | None = None) -> str:
    """Run uv; return the pylock.toml text. uv's failure becomes a classified error (classify_uv_failure).

    ``preferences`` ({name: version}, a previous lock's pins) are written as the output file before
    uv runs: `uv pip compile` prefers the versions an existing output file names and moves one
    only when the requirements exclude it or the index no longer offers it (pip-compile's rule).

    Wheels only (``only_binary``), except the packages in ``no_binary``: those have no wheel for the
    target and are built from their sdist (lockbuild.fetch.sdist). Index credentials are never on
    the command line: uv reads them from netrc. The ``exclude_newer`` cutoff applies where the index
    gives upload times: a package whose index gives none (a PEP 503 HTML index) is exempt from it
    (``--exclude-newer-package NAME=false``, listed in ``report.exempt``); its files are pinned by
    sha256 like every other."""
    report = report if report is not None else UvReport()
    for _round in range(MAX_EXEMPT_ROUNDS):
        proc = _uv_compile_once(requirements, constraints, target=target, index_url=index_url,
                                exclude_newer=exclude_newer, workdir=workdir, extra_index_urls=extra_index_urls,
                                find_links=find_links, only_binary=only_binary, no_binary=no_binary,
                                overrides=overrides, exempt=tuple(report.exempt), preferences=preferences)
        if proc.returncode == 0:
            report.warnings += [ln.strip() for ln in proc.stderr.splitlines() if ln.strip().startswith("warning:")]
            return (workdir / "pylock.toml").read_text()
        names = sorted({canonicalize_name(n) for n in _NO_PUBLISH_TIME.findall(proc.stderr)}
                       | {canonicalize_name(n) for n in _FILTERED.findall(proc.stderr)})
        new = [n for n in names if n not in report.exempt
               and no_upload_times(n, (index_url, *extra_index_urls))]
        if not new:
            break
        report.exempt += new
    raise classify_uv_failure(proc.stderr.strip() or proc.stdout.strip(), target)


def _uv_compile_once(requirements: list[str], constraints: list[str], *, target: PythonTarget, index_url: str,
                     exclude_newer: str, workdir: Path, extra_index_urls: tuple[str, ...],
                     find_links: tuple[str, ...], only_binary: bool, no_binary: tuple[str, ...],
                     overrides: list[str] | None, exempt: tuple[str, ...],
                     preferences: dict[str, str] | None) -> subprocess.CompletedProcess[str]:
    from lockbuild.resolve import headstart

    call = UvCall(requirements=tuple(requirements), constraints=tuple(constraints), python=target.python,
                  wheel_platform=target.wheel_platform, index_url=index_url, exclude_newer=exclude_newer,
                  extra_index_urls=extra_index_urls, find_links=find_links, only_binary=only_binary,
                  no_binary=no_binary, exempt=exempt, overrides=tuple(overrides or ()),
                  preferences=preferences_pylock(preferences) if preferences else "")
    call.write_inputs(workdir)
    proc = headstart.take(call, workdir)  # `lock --upgrade`: this call may already be running
    if proc is None:
        proc = subprocess.run(call.argv(workdir, uv_bin()), capture_output=True, text=True, env=uv_env(), cwd=workdir)
    headstart.remember(call, proc.returncode == 0)
    return proc


def preferences_pylock(pins: dict[str, str]) -> str:
    """A minimal pylock.toml naming only versions: what uv reads preferences from."""
    doc = tomlkit.document()
    doc["lock-version"] = "1.0"
    doc["created-by"] = "lockbuild"
    packages = tomlkit.aot()
    for name in sorted(pins):
        t = tomlkit.table()
        t["name"] = name
        t["version"] = pins[name]
        packages.append(t)
    doc["packages"] = packages
    return tomlkit.dumps(doc)


@dataclass(frozen=True)
class SdistPin:
    """A package the target has no wheel for: its sdist, to be built at lock time."""

    name: str
    version: str
    sdist: Sdist


def source_only(text: str, tags: list[Tag]) -> list[str]:
    """Names in a pylock (resolved with sdists allowed) that have an sdist but no wheel for the target."""
    doc = tomllib.loads(text)  # uv wrote it: plain TOML, read in linear time
    return sorted(canonicalize_name(p["name"]) for p in doc.get("packages", [])
                  if p.get("sdist") and pick_wheel(p.get("wheels") or [], tags) is None)


def parse_pylock(text: str, tags: list[Tag], platform: str, *,
                 sdist_ok: frozenset[str] = frozenset(),
                 bundled: frozenset[str] = frozenset()) -> tuple[list[Wheel], list[SdistPin]]:
    """Wheels (and sdists of ``sdist_ok`` packages) from uv's pylock; ``bundled`` names come from the
    model's own files instead (uv saw them through --find-links)."""
    doc = tomllib.loads(text)  # uv wrote it: plain TOML, read in linear time
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
                raise ResolveError(f"uv returned no url/sha256/size for the sdist of {name}",
                                   hint="the index gives no size for it: pin a version with a wheel for the target")
            url = strip_userinfo(str(sd["url"]))
            sdists.append(SdistPin(name, str(pkg["version"]), Sdist(
                filename=unquote(urlsplit(url).path.rsplit("/", 1)[-1]), url=url, size=int(sd["size"]),
                sha256=from_hex(sha, f"{name} sdist"))))
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
        if not sha:
            raise ResolveError(f"uv returned no sha256 for {wheel_filename(w)}")
        # a PEP 503 HTML index gives no size: SIZE_UNKNOWN, filled in from the verified download
        wheels.append(Wheel(name=name, version=str(pkg["version"]), filename=wheel_filename(w),
                            url=strip_userinfo(str(w.get("url") or "")), size=int(w.get("size", SIZE_UNKNOWN)),
                            sha256=from_hex(sha, wheel_filename(w))))
    return sorted(wheels, key=lambda w: w.name), sorted(sdists, key=lambda s: s.name)


def _platforms(filename: str) -> set[str]:
    return {t.platform for t in parse_wheel_filename(filename)[3]}




# --- the platform tags uv accepts -------------------------------------------------------------------

# What uv 0.13 lists for `--python-platform` (used only when its --help cannot be read).
_KNOWN_MANYLINUX = (17, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40)


@functools.cache
def _uv_manylinux_levels(machine: str) -> tuple[int, ...]:
    """The manylinux_2_N levels this uv accepts as `--python-platform <machine>-manylinux_2_N`, read
    from its own `pip compile --help` (the values clap lists)."""
    try:
        proc = subprocess.run([uv_bin(), "pip", "compile", "--help"], capture_output=True, text=True, timeout=60)
        text = proc.stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    levels = {int(n) for n in re.findall(rf"\b{re.escape(machine)}-manylinux_2_(\d+)\b", text)}
    return tuple(sorted(levels)) or _KNOWN_MANYLINUX


def uv_platform(wheel_platform: str) -> str:
    """The `--python-platform` to give uv for a target whose glibc gives ``wheel_platform``
    (``x86_64-manylinux_2_41`` on trixie): the same when uv accepts it, else the highest manylinux
    level uv knows that is not above the target's glibc (``x86_64-manylinux_2_40``), which is still
    true for the target: a manylinux_2_N wheel runs on every glibc >= 2.N."""
    m = re.fullmatch(r"([a-z0-9_]+)-manylinux_2_(\d+)", wheel_platform)
    if not m:
        return wheel_platform
    machine, level = m.group(1), int(m.group(2))
    known = [n for n in _uv_manylinux_levels(machine) if n <= level]
    if not known:
        raise ResolveError(f"uv accepts no manylinux platform for {machine} at or below glibc 2.{level}",
                           hint="upgrade uv (pip install -U uv) or choose another [target] platform")
    return f"{machine}-manylinux_2_{max(known)}"
