"""Path policy for the rootfs: where a data.tar member lands and which trees are not shipped.

Members are normalised into a merged-/usr layout (bin -> usr/bin, ...); absolute paths and '..'
are refused; docs (except copyright), man/info pages, lintian overrides and translations are
dropped. Its own module because both the extractor (assemble/rootfs.py) and the dpkg database
(assemble/dpkg.py, md5sums paths) apply it.
"""

from __future__ import annotations

from lockbuild.errors import BuildError

# Top-level directories that are symlinks into /usr (merged-/usr); members below them move there.
MERGED_USR = ("bin", "sbin", "lib", "lib64")
MERGED_USR_ARCH_ONLY = {"lib64": ("amd64",)}

# Trees no serving image needs. /usr/share/doc keeps <pkg>/copyright (licences, SBOM scanners).
DROPPED_TREES = ("usr/share/man", "usr/share/info", "usr/share/lintian", "usr/share/locale")
DOC_TREE = "usr/share/doc"


def member_path(name: str, pkg: str) -> str | None:
    """Normalised, merged-/usr relative path of a data.tar member; None for the root entry.

    Raises BuildError for absolute paths and '..' components.
    """
    path = name
    while path.startswith("./"):
        path = path[2:]
    if path.startswith("/"):
        raise BuildError(f"{pkg}: unsafe absolute path in data.tar: {name!r}",
                         hint="the package is malformed or malicious; do not use it")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BuildError(f"{pkg}: unsafe '..' path in data.tar: {name!r}",
                         hint="the package is malformed or malicious; do not use it")
    if not parts:
        return None
    if parts[0] in MERGED_USR:
        parts = ["usr", *parts]
    return "/".join(parts)


def is_dropped(path: str) -> bool:
    """Paths a serving image does not ship (docs except copyright, man, info, locale, lintian)."""
    if any(path == t or path.startswith(t + "/") for t in DROPPED_TREES):
        return True
    if path.startswith(DOC_TREE + "/"):
        rest = path[len(DOC_TREE) + 1:].split("/")
        return not (len(rest) == 1 or (len(rest) == 2 and rest[1] == "copyright"))
    return False
