"""The target runtime: which Debian suite carries the model's Python, and what that implies.

The interpreter is Debian's own ``python3.X`` package, so the logged Python minor picks the
suite (3.11 -> bookworm) and the suite's glibc picks the wheel platform uv resolves for.
Everything here is a pure function of its arguments: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lockbuild.errors import PythonVersionError, ResolveError
from lockbuild.platforms import PLATFORM_ARCHES, WHEEL_MACHINES, debian_arch

__all__ = ["PLATFORM_ARCHES", "WHEEL_MACHINES", "debian_arch"]  # re-exported: one mapping, in platforms.py

# Python minor -> the Debian release whose default python3 is that minor.
SUITES: dict[str, str] = {"3.9": "bullseye", "3.11": "bookworm", "3.13": "trixie"}

OVERRIDE_HINT = 'set the interpreter explicitly in lockbuild.toml: [target] python = "3.11"'


@dataclass(frozen=True)
class SuiteChoice:
    codename: str  # bookworm
    interpreter_package: str  # python3.11
    python_minor: str  # 3.11


def minor_of(version: str) -> str:
    """'3.11.4' -> '3.11'; '3.11' -> '3.11'. Raises PythonVersionError if not X.Y[...]."""
    m = re.match(r"^\s*(\d+)\.(\d+)", version or "")
    if not m:
        raise PythonVersionError(
            f"cannot read a Python version from {version!r}",
            hint=f"supported: {', '.join(SUITES)}; {OVERRIDE_HINT}",
        )
    return f"{int(m.group(1))}.{int(m.group(2))}"


def _available() -> str:
    return ", ".join(f"{v} ({c})" for v, c in SUITES.items())


def choose_suite(python_minor: str, *, spec_file: str | None = None, logged: str = "") -> SuiteChoice:
    """The Debian suite whose python3.X package provides this Python minor. ``spec_file`` is set when the
    minor is the spec's ``[target] python`` (not what the model logged): the message must say so.
    A logged minor Debian does not ship goes through ``candidates`` instead (lock/create.py)."""
    minor = minor_of(python_minor)
    codename = SUITES.get(minor)
    if codename is None:
        if spec_file is not None:
            raise PythonVersionError(
                f'the spec\'s [target] python = "{python_minor}" ({spec_file}) is not one of Debian\'s own '
                f"interpreters lockbuild builds on: {_available()}"
                + (f"; the model itself logged Python {logged}" if logged else ""),
                where=f"{spec_file} [target] python",
                hint="set [target] python to one of " + ", ".join(SUITES)
                + (", or remove the line: `lock` then uses the Debian interpreter nearest the model's "
                   f"Python {logged} for which the whole environment resolves" if logged else ""),
            )
        raise PythonVersionError(
            f"Python {python_minor} is not one of Debian's own interpreters lockbuild builds on: {_available()}",
            hint=f"{OVERRIDE_HINT} (choose a version the model's libraries support)",
        )
    return SuiteChoice(codename=codename, interpreter_package=f"python{minor}", python_minor=minor)


def _minor_key(minor: str) -> tuple[int, int]:
    major, _, rest = minor.partition(".")
    return int(major), int(rest)


def candidates(python_minor: str) -> list[SuiteChoice]:
    """Debian's interpreters to try for a logged minor Debian does not ship, nearest first.

    Distance is in minors (3.10 is 1 from 3.9 and from 3.11); on a tie the newer interpreter comes
    first: Python keeps backward compatibility (a newer interpreter runs what an older one wrote),
    not forward, and the older neighbour's Debian release is the one nearer its end of life. When the
    newer one has no wheels for the model's pins (TensorFlow 2.16 has no cp313), `lock` falls back
    to the next. A different major (Python 2) has no candidate."""
    major, minor = _minor_key(minor_of(python_minor))
    same_major = [m for m in SUITES if _minor_key(m)[0] == major]
    if not same_major:
        raise PythonVersionError(
            f"the model was logged with Python {python_minor}; lockbuild builds only on Debian's Python 3 "
            f"interpreters: {_available()}",
            hint="re-log the model under Python 3 (3.9, 3.11 or 3.13 need no interpreter change)")
    order = sorted(same_major, key=lambda m: (abs(_minor_key(m)[1] - minor), -_minor_key(m)[1]))
    return [SuiteChoice(codename=SUITES[m], interpreter_package=f"python{m}", python_minor=m) for m in order]


def wheel_platform(glibc: str, arch: str) -> str:
    """uv's --python-platform for glibc and a Debian arch: ('2.36', 'amd64') -> 'x86_64-manylinux_2_36'."""
    m = re.fullmatch(r"(\d+)\.(\d+)", glibc)
    if not m:
        raise ResolveError(f"not a glibc version: {glibc!r}", hint="expected MAJOR.MINOR, e.g. 2.36")
    machine = WHEEL_MACHINES[debian_arch(arch)]
    return f"{machine}-manylinux_{m.group(1)}_{m.group(2)}"


def _upstream(deb_version: str) -> str:
    """Debian version -> upstream part: drop the epoch and the Debian revision."""
    v = deb_version.split(":", 1)[1] if ":" in deb_version else deb_version
    return v.rsplit("-", 1)[0] if "-" in v else v


def python_version_from_deb(version: str) -> str:
    """'3.11.2-6+deb12u6' -> '3.11.2' (the interpreter's own version)."""
    m = re.match(r"(\d+\.\d+(?:\.\d+)?)", _upstream(version))
    if not m:
        raise ResolveError(f"cannot read a Python version from Debian version {version!r}")
    return m.group(1)


def glibc_from_deb(version: str) -> str:
    """'2.36-9+deb12u13' -> '2.36' (libc6's version -> the manylinux glibc level)."""
    m = re.match(r"(\d+\.\d+)", _upstream(version))
    if not m:
        raise ResolveError(f"cannot read a glibc version from Debian version {version!r}")
    return m.group(1)
