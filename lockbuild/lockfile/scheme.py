"""Where a wheel's files are installed: installer's scheme mapping, defined once for every check.

The builder installs with pypa/installer into the image's Debian-python scheme (``install_scheme``).
installer puts a member ``<distribution>-<version>.data/<key>/<path>`` into scheme ``key``
(purelib, platlib, headers, scripts, data) at ``<path>``, and every other member into the root
scheme (site-packages: purelib and platlib are one directory here) at its own name; directory
entries and files in ``__pycache__`` are not installed. ``scheme_paths`` is that rule, for a
wheel's zip member names, and every place that asks where a member lands uses it: the lock
stage's overlap check (resolve/overlap.py) and pruned lists (lockfile/prune.py ``site_paths``),
and the builder's conflict check (assemble/wheels.py), so the lock and the build cannot disagree.
Entry-point scripts, which installer generates, are not members: only the build sees them.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable

from installer.utils import SCHEME_NAMES, parse_wheel_filename

from lockbuild.fsutil import escapes

SITE = ("purelib", "platlib")


class MemberError(ValueError):
    """A member installer would refuse or write outside the install root; the caller names the wheel."""


def install_scheme(python: str) -> dict[str, str]:
    """The image's install scheme for target Python ``python`` (``3.11`` or ``3.11.2``): Debian's
    python3.X searches /usr/local/lib/python3.X/dist-packages; scripts go to /usr/local/bin."""
    minor = ".".join(python.split(".")[:2])
    site = f"/usr/local/lib/python{minor}/dist-packages"
    return {
        "purelib": site,
        "platlib": site,
        "headers": f"/usr/local/include/python{minor}",
        "scripts": "/usr/local/bin",
        "data": "/usr/local",
    }


def _data_dir(filename: str | None, members: list[str]) -> str | None:
    """``<distribution>-<version>.data``: from the wheel's file name, as installer takes it, or
    (no name at hand) from its one top-level ``*.dist-info`` directory."""
    if filename:
        parsed = parse_wheel_filename(filename)
        return f"{parsed.distribution}-{parsed.version}.data"
    infos = {m.split("/", 1)[0] for m in members if m.split("/", 1)[0].endswith(".dist-info") and "/" in m}
    return infos.pop().removesuffix(".dist-info") + ".data" if len(infos) == 1 else None


Refuse = Callable[[str], Exception]  # why a member is refused -> the caller's error (naming the wheel)


def scheme_paths(members: Iterable[str], filename: str | None = None, *,
                 refuse: Refuse = MemberError) -> list[tuple[str, str]]:
    """(scheme key, path within it) for each installed member of the wheel ``filename``, as
    installer maps it (the root scheme is given as ``purelib``). Raises ``refuse(why)`` for a
    member that escapes the install root or names an unknown scheme."""
    names = list(members)
    data_dir = _data_dir(filename, names)
    out: list[tuple[str, str]] = []
    for name in names:
        if name.endswith("/"):
            continue
        if escapes(name):
            raise refuse(f"member {name!r} would be written outside the install root")
        norm = posixpath.normpath(name)
        if "__pycache__" in norm.split("/")[:-1]:
            continue
        first, _, rest = norm.partition("/")
        if first != data_dir or not rest:
            out.append(("purelib", norm))
            continue
        key, _, sub = rest.partition("/")
        if key not in SCHEME_NAMES or not sub:
            raise refuse(f"member {name!r} is not in a known .data scheme ({', '.join(SCHEME_NAMES)})")
        out.append((key, sub))
    return out


def install_paths(members: Iterable[str], filename: str, scheme: dict[str, str], *,
                  refuse: Refuse = MemberError) -> list[str]:
    """Where each installed member of the wheel ``filename`` lands under ``scheme`` (image paths,
    without the leading ``/``)."""
    return [posixpath.join(scheme[key], path).lstrip("/")
            for key, path in scheme_paths(members, filename, refuse=refuse)]
