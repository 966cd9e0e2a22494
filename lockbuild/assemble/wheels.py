"""Python packages into the image tree: pypa/installer with a Debian-python scheme.

Debian's python3.X searches /usr/local/lib/python3.X/dist-packages, so wheels go there and
console scripts go to /usr/local/bin with the image's interpreter in their shebang. installer
writes no bytecode; `finish_distributions` then applies the lock's [build] rules: prunes files
(assemble/prune.py) and byte-compiles the rest with the image's own interpreter
(assemble/bytecode.py), rewriting each distribution's RECORD to match.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

from installer import install
from installer.destinations import SchemeDictionaryDestination
from installer.sources import WheelFile

from lockbuild.assemble.bytecode import TargetPython, compile_tree
from lockbuild.assemble.prune import Rules, WheelContent, add_pyc_to_record, dist_infos, prune_distribution
from lockbuild.errors import BuildError
from lockbuild.lock.model import Target, Wheel


def scheme(target: Target) -> dict[str, str]:
    minor = ".".join(target.python.split(".")[:2])
    site = f"/usr/local/lib/python{minor}/dist-packages"
    return {
        "purelib": site,
        "platlib": site,
        "headers": f"/usr/local/include/python{minor}",
        "scripts": "/usr/local/bin",
        "data": "/usr/local",
    }


def interpreter(target: Target) -> str:
    return "/usr/bin/python" + ".".join(target.python.split(".")[:2])


def _safe(name: str, wheel: Wheel) -> str:
    norm = posixpath.normpath(name)
    if name.startswith("/") or norm.startswith("../") or norm == ".." or "\\" in name:
        raise BuildError(
            f"{wheel.filename}: member {name!r} would be written outside the install root",
            hint="the wheel is malicious or corrupt; remove it from the lock",
        )
    return norm


def install_paths(wheel: Wheel, path: Path, target: Target) -> list[str]:
    """Image paths (no leading /) the wheel will write, from its zip listing. Checks safety."""
    sch = scheme(target)
    out = []
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            name = _safe(info.filename, wheel)
            first, _, rest = name.partition("/")
            if first.endswith(".data") and rest:
                key, _, sub = rest.partition("/")
                base = sch.get(key)
                if base is None:
                    raise BuildError(f"{wheel.filename}: unknown wheel data scheme {key!r}")
                if key == "headers":
                    base = posixpath.join(base, wheel.name)
                out.append(posixpath.join(base, sub).lstrip("/"))
            else:
                out.append(posixpath.join(sch["purelib"], name).lstrip("/"))
    return out


def find_conflicts(listings: Iterable[tuple[Wheel, list[str]]]) -> list[tuple[str, str, str]]:
    """[(path, first distribution, second distribution)] for files two wheels both write."""
    owner: dict[str, str] = {}
    conflicts = []
    for wheel, paths in listings:
        for p in paths:
            if p in owner and owner[p] != wheel.name:
                conflicts.append((p, owner[p], wheel.name))
            else:
                owner[p] = wheel.name
    return conflicts


def conflict_error(conflicts: list[tuple[str, str, str]]) -> BuildError:
    pairs = sorted({(a, b) for _, a, b in conflicts})
    sample = "; ".join(f"{p} ({a} and {b})" for p, a, b in conflicts[:3])
    names = ", ".join(f"{a} and {b}" for a, b in pairs)
    return BuildError(
        f"two distributions write the same files: {names}; e.g. {sample}",
        hint="keep exactly one of them: [python] variants = { unwanted = \"wanted\" } in lockbuild.toml (every "
        "requirement on the unwanted name then resolves to the wanted one), then run `lockbuild lock`",
    )


def install_wheel(wheel: Wheel, path: Path, target: Target, root: Path) -> None:
    """Install one verified wheel into the staging tree `root` (the image's /)."""
    install_paths(wheel, path, target)  # safety check before anything is written
    dest = SchemeDictionaryDestination(
        scheme(target),
        interpreter=interpreter(target),
        script_kind="posix",
        bytecode_optimization_levels=(),
        destdir=str(root),
    )
    try:
        with tempfile.TemporaryDirectory(prefix="wheel-") as d:
            named = Path(d) / wheel.filename  # installer reads name/version/tags from the file name
            os.symlink(path, named)
            with WheelFile.open(named) as source:
                source.validate_record(validate_contents=False)
                install(source, dest, additional_metadata={"INSTALLER": b"lockbuild\n"})
    except FileExistsError as e:
        raise BuildError(f"{wheel.filename}: {e}", hint="two distributions write the same file") from None
    except Exception as e:  # installer raises several types for broken wheels
        if isinstance(e, BuildError):
            raise
        raise BuildError(f"cannot install {wheel.filename}: {e}") from None


def finish_distributions(root: Path, target: Target, rules: Rules, py: TargetPython | None) -> list[WheelContent]:
    """After installing a layer's wheels into ``root``: prune by ``rules``, then (when ``py`` is
    given) byte-compile the remaining sources with in-image file names, and record both in each
    distribution's RECORD, so the installed metadata describes exactly the files in the image."""
    site_rel = scheme(target)["purelib"].strip("/")
    site = root / site_rel
    contents = [prune_distribution(site, d, rules) for d in dist_infos(site)]
    if py is not None:
        compiled = compile_tree(py, root, [f"{site_rel}/{s}" for c in contents for s in c.sources], "")
        prefix = site_rel + "/"
        by_site = {src[len(prefix):]: pyc[len(prefix):] for src, pyc in compiled.items()}
        for c in contents:
            add_pyc_to_record(site, c, by_site)
    return contents
