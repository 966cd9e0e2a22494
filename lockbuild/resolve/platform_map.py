"""Training environments from other platforms, mapped onto the target before resolution.

Models are logged where they were trained: on a Mac (``tensorflow-macos``, ``tensorflow-metal``),
on Windows (``tensorflow-intel``, ``pywin32``), on a GPU machine (``tensorflow[and-cuda]``,
``nvidia-cudnn-cu12``, ``tensorrt``). The image is Linux, CPU only. ``TABLE`` is the one place
that says what each such requirement becomes on the target: another distribution at the same
version specifier (the CPU build of the same source), the same name without a CUDA extra, or
nothing (a plugin or binding that exists only on the training platform). Every line it changes is
recorded in the lock (``[[python.mapped]]``) and printed; ``lock`` never maps silently.

CUDA rows apply unless the spec asks for CUDA: a ``[python] requirements`` line that names a CUDA
distribution (``nvidia-*-cu12``, ``tensorrt``) or a CUDA extra (``tensorflow[and-cuda]``). Without
that, a CUDA wheel that still comes in through a dependency fails the lock (``cuda_guard``): CUDA
libraries never enter a CPU image by accident.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from lockbuild.errors import ResolveError
from lockbuild.lockfile.model import Mapped, Wheel

KEEP = "="  # the row leaves the name as it is on this architecture


@dataclass(frozen=True)
class Row:
    pattern: str  # canonical distribution name, or an fnmatch pattern of names
    origin: str  # "macOS", "Windows", "CUDA", "x86-64", "arm64": what the distribution is built for
    amd64: str | None  # the name on linux/amd64; None: dropped; KEEP: unchanged
    arm64: str | None  # the same for linux/arm64
    why: str  # what the distribution is, in words (the lock's reason starts with it)


TABLE: tuple[Row, ...] = (
    Row("tensorflow-macos", "macOS", "tensorflow-cpu", "tensorflow",
        "TensorFlow's macOS build (Apple silicon)"),
    Row("tensorflow-metal", "macOS", None, None,
        "TensorFlow's PluggableDevice for Apple GPUs (Metal); no Linux build, TensorFlow runs on the CPU without it"),
    Row("tensorflow-intel", "Windows", "tensorflow-cpu", "tensorflow", "TensorFlow's Windows build"),
    Row("tensorflow-directml-plugin", "Windows", None, None, "TensorFlow's DirectML GPU plugin for Windows"),
    Row("tensorflow-gpu", "CUDA", "tensorflow-cpu", "tensorflow", "TensorFlow's former GPU distribution name"),
    Row("tensorflow-cpu", "x86-64", KEEP, "tensorflow",
        "TensorFlow's x86-64 CPU build (no arm64 wheels; Linux arm64's `tensorflow` is CPU-only)"),
    Row("tensorflow-aarch64", "arm64", "tensorflow-cpu", KEEP, "TensorFlow's former Linux arm64 build"),
    Row("pywin32", "Windows", None, None, "Python bindings for the Windows API"),
    Row("pypiwin32", "Windows", None, None, "Python bindings for the Windows API (old name)"),
    Row("pywinpty", "Windows", None, None, "Windows pseudo-terminals"),
    Row("wmi", "Windows", None, None, "Windows Management Instrumentation"),
    Row("pyobjc", "macOS", None, None, "Python bindings for macOS frameworks"),
    Row("pyobjc-*", "macOS", None, None, "Python bindings for macOS frameworks"),
    Row("nvidia-*-cu1[0-9]", "CUDA", None, None, "NVIDIA CUDA libraries"),
    Row("nvidia-*-cu1[0-9]-*", "CUDA", None, None, "NVIDIA CUDA libraries"),
    Row("tensorrt", "CUDA", None, None, "NVIDIA TensorRT (CUDA inference libraries)"),
    Row("tensorrt-*", "CUDA", None, None, "NVIDIA TensorRT (CUDA inference libraries)"),
)

# Extras that add CUDA wheels (tensorflow[and-cuda], jax[cuda12], ...): dropped from the line.
CUDA_EXTRA = re.compile(r"^(and-)?cuda(\d+)?([_-].*)?$")


def row_for(name: str) -> Row | None:
    n = canonicalize_name(name)
    return next((r for r in TABLE if fnmatch.fnmatchcase(n, r.pattern)), None)


def is_cuda(name: str) -> bool:
    row = row_for(name)
    return row is not None and row.origin == "CUDA" and row.amd64 is None


def spec_asks_for_cuda(spec_requirements: tuple[str, ...] | list[str]) -> bool:
    """The spec asks for CUDA when one of its [python] requirements names a CUDA distribution or extra."""
    for line in spec_requirements:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if is_cuda(req.name) or any(CUDA_EXTRA.match(canonicalize_name(e)) for e in req.extras):
            return True
    return False


def _arch(platform: str) -> str:
    return platform.rsplit("/", 1)[-1]


def _marker_env(platform: str, python: str) -> dict[str, str]:
    env: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(_arch(platform), _arch(platform))
    env.update(sys_platform="linux", platform_system="Linux", os_name="posix", platform_machine=machine,
               implementation_name="cpython", platform_python_implementation="CPython",
               python_version=".".join(python.split(".")[:2]), python_full_version=python)
    return env


def map_requirements(lines: list[str], *, platform: str, python: str,
                     cuda: bool = False) -> tuple[list[str], tuple[Mapped, ...]]:
    """The model's requirement lines as the target needs them, and one record per changed line.

    ``cuda``: the spec asks for CUDA (CUDA rows and extras are then left alone). A line whose
    environment marker is false on the target is left as it is: uv skips it there anyway. Each
    distinct line is parsed once (a requirements file may repeat one line many times)."""
    arch = _arch(platform)
    env = _marker_env(platform, python)
    out: list[str] = []
    records: list[Mapped] = []
    seen: dict[str, tuple[str | None, Mapped | None]] = {}
    for line in lines:
        if line not in seen:
            seen[line] = _map_line(line, arch=arch, env=env, platform=platform, cuda=cuda)
        new, record = seen[line]
        if new is not None:
            out.append(new)
        if record is not None:
            records.append(record)
    return out, tuple(records)


def _map_line(line: str, *, arch: str, env: dict[str, str], platform: str,
              cuda: bool) -> tuple[str | None, Mapped | None]:
    """(the line as the target needs it, None: dropped; the record when it changed)."""
    try:
        req = Requirement(line)
    except InvalidRequirement:
        return line, None  # model_requirements names the bad line
    if req.marker is not None and not req.marker.evaluate(env):
        return line, None
    row = row_for(req.name)
    if row is not None and row.origin == "CUDA" and cuda:
        row = None
    new_name = req.name
    reasons: list[str] = []
    if row is not None:
        to = row.amd64 if arch == "amd64" else row.arm64 if arch == "arm64" else KEEP
        if to is None:
            return None, Mapped(logged=line, locked="", reason=f"{row.why}: nothing to install on {platform}")
        if to != KEEP:
            new_name = to
            reasons.append(f"{row.why}: {to} is the {platform} CPU equivalent at the same version")
    cuda_extras = sorted(e for e in req.extras if CUDA_EXTRA.match(canonicalize_name(e))) if not cuda else []
    if cuda_extras:
        req.extras -= set(cuda_extras)
        reasons.append(f"the extra [{', '.join(cuda_extras)}] adds NVIDIA CUDA libraries: a CPU image "
                       "installs the package without it")
    if not reasons:
        return line, None
    req.name = new_name
    new = str(req)
    return new, Mapped(logged=line, locked=new, reason="; ".join(reasons))


def cuda_guard(wheels: list[Wheel], *, cuda: bool, platform: str) -> None:
    """CUDA wheels enter an image only when the spec asks for them (``spec_asks_for_cuda``)."""
    found = sorted(f"{w.name}=={w.version}" for w in wheels if is_cuda(w.name))
    if found and not cuda:
        raise ResolveError(
            f"the resolution for {platform} contains NVIDIA CUDA wheels the spec did not ask for: "
            f"{', '.join(found[:6])}{' …' if len(found) > 6 else ''}; a CPU image must not carry them",
            hint="pin a CPU build of the package that pulls them in [python] requirements (or drop it with "
            "[python] exclude); to build a GPU image on purpose, name the CUDA distributions or extra in "
            '[python] requirements (e.g. "tensorflow[and-cuda]==2.21.0")',
        )
