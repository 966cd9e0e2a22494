"""The dpkg database of the rootfs, distroless layout: /var/lib/dpkg/status.d/<pkg> (the control
paragraph with 'Status: install ok installed') and <pkg>.md5sums (merged-/usr paths, limited to
the files actually in the tree), so Trivy and Syft see the packages.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from debian import deb822

from lockbuild.assemble.deb import tar_text
from lockbuild.assemble.paths import member_path
from lockbuild.errors import BuildError
from lockbuild.lockfile.model import Deb

STATUS_DIR = "var/lib/dpkg/status.d"


def status_paragraph(control: bytes, pkg: str) -> str:
    """The control paragraph with 'Status: install ok installed' after Package (dpkg's order)."""
    para = deb822.Deb822(control)
    if para.get("Package") != pkg:
        raise BuildError(f"{pkg}: control file names package {para.get('Package')!r}",
                         hint="the .deb does not match the lock entry")
    out = deb822.Deb822()
    out["Package"] = para["Package"]
    out["Status"] = "install ok installed"
    for key, value in para.items():
        if key not in ("Package", "Status"):
            out[key] = value
    return out.dump()


def rewrite_md5sums(md5sums: bytes, pkg: str, present: set[str]) -> bytes:
    """md5sums with merged-/usr paths, limited to the files actually in the tree."""
    lines = []
    for line in md5sums.decode("utf-8", "surrogateescape").splitlines():
        digest, sep, path = line.partition("  ")
        if not sep:
            continue
        rel = member_path(path, pkg)
        if rel is not None and rel in present:
            lines.append(f"{digest}  {rel}\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


def write_status(dest: Path, deb: Deb, control_tar: tarfile.TarFile, files: set[str]) -> None:
    """status.d/<pkg> and <pkg>.md5sums below ``dest``; ``files``: the package's paths in the tree."""
    control = tar_text(control_tar, "control")
    if control is None:
        raise BuildError(f"{deb.name}: control.tar has no control file", hint="the .deb is corrupt")
    status_dir = dest / STATUS_DIR
    (status_dir / deb.name).write_text(status_paragraph(control, deb.name))
    md5sums = tar_text(control_tar, "md5sums")
    if md5sums is not None:
        (status_dir / f"{deb.name}.md5sums").write_bytes(
            rewrite_md5sums(md5sums, deb.name, files))
