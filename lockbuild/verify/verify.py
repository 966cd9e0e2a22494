"""`lockbuild verify`: an image, checked file by file against its lock.

One streaming pass over the layers (never the whole image in memory) builds the merged file
view: path -> (sha256, md5, size) plus the contents of a few small metadata files. The checks
then compare that view with the lock:

  digests   every layer's compressed digest and diff_id; the config digest
  python    installed distributions == lock (names, versions); every RECORD file present with
            its hash; no unlisted files in site-packages
  debian    every locked package has status.d with the locked version; every file its
            md5sums lists is present with that md5
  model     every model file with the locked sha256, nothing else under /opt/ml/model
  labels    the config carries the lock's digest

Each mismatch is a Finding naming the file, the expected and the actual value.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import posixpath
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

import zstandard
from packaging.utils import canonicalize_name

from lockbuild.assemble.model import MODEL_DIR
from lockbuild.assemble.wheels import scheme
from lockbuild.lock.model import Lock
from lockbuild.verify.source import ImageSource

KEEP_CONTENT_SUFFIXES = (".dist-info/METADATA", ".dist-info/RECORD")
KEEP_CONTENT_PREFIXES = ("var/lib/dpkg/status.d/", "opt/lockbuild/")
CHUNK = 1 << 20


@dataclass(frozen=True)
class Finding:
    check: str
    path: str
    expected: str
    actual: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"check": self.check, "path": self.path, "expected": self.expected, "actual": self.actual,
                "message": self.message}


@dataclass
class FileRec:
    kind: str  # file | dir | symlink | hardlink
    sha256: str = ""
    md5: str = ""
    size: int = 0
    target: str = ""


@dataclass
class Report:
    image: str
    findings: list[Finding] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.findings

    def add(self, check: str, path: str, expected: str, actual: str, message: str) -> None:
        self.findings.append(Finding(check, path, expected, actual, message))

    def count(self, check: str, n: int = 1) -> None:
        self.checked[check] = self.checked.get(check, 0) + n

    def to_dict(self) -> dict:
        return {"image": self.image, "ok": self.ok, "checked": self.checked,
                "findings": [f.to_dict() for f in self.findings]}


class _HashReader:
    """Read-through stream that hashes what passes."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.h = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.h.update(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def _norm(name: str) -> str:
    name = name.removeprefix("./").rstrip("/")
    return posixpath.normpath(name) if name else "."


def scan_layer(stream: BinaryIO, files: dict[str, FileRec], contents: dict[str, bytes]) -> tuple[str, str]:
    """Apply one layer to the merged view. Returns (sha256 of the blob, sha256 of the tar)."""
    outer = _HashReader(stream)
    head = outer.read(2)

    class _Prefixed:
        def __init__(self) -> None:
            self.buf = head

        def read(self, n: int = -1) -> bytes:
            if self.buf:
                if n < 0:
                    data, self.buf = self.buf + outer.read(), b""
                    return data
                data, self.buf = self.buf[:n], self.buf[n:]
                if len(data) < n:
                    data += outer.read(n - len(data))
                return data
            return outer.read(n)

    raw = _Prefixed()
    inner_src: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if head == b"\x1f\x8b" else raw  # type: ignore
    if head == b"\x28\xb5":  # zstd frame magic 28 b5 2f fd ([image] compression = "zstd")
        inner_src = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)  # type: ignore
    inner = _HashReader(inner_src)
    with tarfile.open(fileobj=inner, mode="r|") as tar:  # type: ignore[call-overload]
        for m in tar:
            path = _norm(m.name)
            base = posixpath.basename(path)
            parent = posixpath.dirname(path)
            if base == ".wh..wh..opq":
                for p in [p for p in files if p.startswith(parent + "/")]:
                    del files[p]
                continue
            if base.startswith(".wh."):
                victim = posixpath.join(parent, base[4:])
                for p in [p for p in files if p == victim or p.startswith(victim + "/")]:
                    del files[p]
                continue
            if m.isreg():
                f = tar.extractfile(m)
                sha, md5, size = hashlib.sha256(), hashlib.md5(), 0
                keep = path.endswith(KEEP_CONTENT_SUFFIXES) or path.startswith(KEEP_CONTENT_PREFIXES)
                buf = bytearray()
                while chunk := f.read(CHUNK):  # type: ignore[union-attr]
                    sha.update(chunk)
                    md5.update(chunk)
                    size += len(chunk)
                    if keep:
                        buf += chunk
                files[path] = FileRec("file", sha.hexdigest(), md5.hexdigest(), size)
                if keep:
                    contents[path] = bytes(buf)
            elif m.issym():
                files[path] = FileRec("symlink", target=m.linkname)
            elif m.islnk():
                src = files.get(_norm(m.linkname))
                files[path] = FileRec("file", src.sha256, src.md5, src.size) if src else FileRec("hardlink")
            elif m.isdir():
                files[path] = FileRec("dir")
    inner.drain()
    outer.drain()
    return "sha256:" + outer.h.hexdigest(), "sha256:" + inner.h.hexdigest()


def check_digests(src: ImageSource, report: Report, files: dict[str, FileRec], contents: dict[str, bytes]) -> None:
    cfg = src.config_json
    diff_ids = cfg.get("rootfs", {}).get("diff_ids", [])
    if len(diff_ids) != len(src.layer_digests):
        report.add("digests", "config.rootfs.diff_ids", str(len(src.layer_digests)), str(len(diff_ids)),
                   "the config lists a different number of layers than the image has")
    for i, expected_digest in enumerate(src.layer_digests):
        try:
            with src.open_layer(i) as stream:
                blob, diff = scan_layer(stream, files, contents)
        except (OSError, EOFError, tarfile.TarError, zlib.error, zstandard.ZstdError) as e:
            report.add("digests", f"layer {i}", expected_digest or (diff_ids[i] if i < len(diff_ids) else "?"),
                       "unreadable", f"layer cannot be read: {e}")
            continue
        if expected_digest and blob != expected_digest:
            report.add("digests", f"layer {i}", expected_digest, blob, "layer blob does not match its digest")
        if i < len(diff_ids) and diff != diff_ids[i]:
            report.add("digests", f"layer {i}", diff_ids[i], diff, "layer content does not match its diff_id")
        report.count("digests")


def _parse_metadata(text: str) -> tuple[str, str]:
    name = version = ""
    for line in text.splitlines():
        if not line.strip():
            break
        if line.startswith("Name:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("Version:"):
            version = line.split(":", 1)[1].strip()
    return canonicalize_name(name), version


def _record_hash(spec: str) -> str | None:
    algo, _, value = spec.partition("=")
    if algo != "sha256" or not value:
        return None
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


def check_python(lock: Lock, report: Report, files: dict[str, FileRec], contents: dict[str, bytes]) -> None:
    site = scheme(lock.target)["purelib"].lstrip("/")
    installed: dict[str, tuple[str, str]] = {}
    claimed: set[str] = set()
    for path, data in contents.items():
        rel = path[len(site) + 1:]
        if not (path.startswith(site + "/") and rel.count("/") == 1 and rel.endswith(".dist-info/METADATA")):
            continue  # only top-level dist-info dirs (not ones vendored inside a package)
        name, version = _parse_metadata(data.decode("utf-8", "replace"))
        dist_info = posixpath.dirname(path)
        installed[name] = (version, dist_info)
        record = contents.get(dist_info + "/RECORD")
        if record is None:
            report.add("python", dist_info + "/RECORD", "present", "missing", f"{name} has no RECORD")
            continue
        for row in record.decode("utf-8", "replace").splitlines():
            if not row.strip():
                continue
            rel, h, _size = (row.rsplit(",", 2) + ["", ""])[:3]
            rel = rel.strip('"')
            full = posixpath.normpath(posixpath.join(site, rel))
            claimed.add(full)
            rec = files.get(full)
            if rec is None:
                report.add("python", full, "present", "missing", f"{name}: a file its RECORD lists is missing")
                continue
            want = _record_hash(h)
            if want and rec.sha256 != want:
                report.add("python", full, want, rec.sha256, f"{name}: file content differs from RECORD")
            report.count("python-files")
    locked = {w.name: w.version for w in lock.python.packages}
    for name, version in sorted(locked.items()):
        if name not in installed:
            report.add("python", name, version, "not installed", f"locked distribution {name} is missing")
        elif installed[name][0] != version:
            report.add("python", name, version, installed[name][0], f"{name} has a different version")
    for name in sorted(set(installed) - set(locked)):
        report.add("python", installed[name][1], "not in lock", installed[name][0],
                   f"distribution {name} is installed but not locked")
    for path, rec in sorted(files.items()):
        if rec.kind == "file" and path.startswith(site + "/") and path not in claimed:
            report.add("python", path, "listed in a RECORD", "unlisted", "file in site-packages no RECORD claims")
    report.count("python-dists", len(installed))


def _status_version(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return ""


def check_debian(lock: Lock, report: Report, files: dict[str, FileRec], contents: dict[str, bytes]) -> None:
    for deb in lock.debian.packages:
        status = contents.get(f"var/lib/dpkg/status.d/{deb.name}")
        if status is None:
            report.add("debian", f"var/lib/dpkg/status.d/{deb.name}", deb.version, "missing",
                       f"locked package {deb.name} is not recorded in the image")
            continue
        actual = _status_version(status.decode("utf-8", "replace"))
        if actual != deb.version:
            report.add("debian", f"var/lib/dpkg/status.d/{deb.name}", deb.version, actual,
                       f"{deb.name} has a different version")
        sums = contents.get(f"var/lib/dpkg/status.d/{deb.name}.md5sums", b"")
        for line in sums.decode("utf-8", "replace").splitlines():
            md5, _, rel = line.partition("  ")
            rel = _norm(rel.strip())
            rec = files.get(rel)
            if rec is None:
                report.add("debian", rel, md5, "missing", f"{deb.name}: a packaged file is missing")
            elif rec.kind == "file" and rec.md5 != md5:
                report.add("debian", rel, md5, rec.md5, f"{deb.name}: file content differs from the package")
            report.count("debian-files")
        report.count("debian-packages")
    installed = {p.removeprefix("var/lib/dpkg/status.d/") for p in contents
                 if p.startswith("var/lib/dpkg/status.d/") and not p.endswith(".md5sums")}
    for extra in sorted(installed - {d.name for d in lock.debian.packages}):
        report.add("debian", f"var/lib/dpkg/status.d/{extra}", "not in lock", "installed",
                   f"package {extra} is in the image but not in the lock")


def check_model(lock: Lock, report: Report, files: dict[str, FileRec]) -> None:
    locked = {f.path: f for f in lock.model.files}
    for rel, f in sorted(locked.items()):
        rec = files.get(f"{MODEL_DIR}/{rel}")
        if rec is None:
            report.add("model", f"/{MODEL_DIR}/{rel}", f.sha256, "missing", "model file missing")
        elif rec.sha256 != f.sha256:
            report.add("model", f"/{MODEL_DIR}/{rel}", f.sha256, rec.sha256, "model file differs from the lock")
        report.count("model-files")
    for path, rec in sorted(files.items()):
        if rec.kind == "file" and path.startswith(MODEL_DIR + "/") and path[len(MODEL_DIR) + 1:] not in locked:
            report.add("model", "/" + path, "not in lock", rec.sha256, "unlocked file in the model directory")


def check_labels(src: ImageSource, lock_digest: str, report: Report) -> None:
    labels = (src.config_json.get("config") or {}).get("Labels") or {}
    actual = labels.get("io.lockbuild.lock.digest", "missing")
    if actual != lock_digest:
        report.add("labels", "io.lockbuild.lock.digest", lock_digest, actual,
                   "the image was not built from this lock")
    report.count("labels")


def verify(src: ImageSource, lock: Lock, lock_digest: str) -> Report:
    report = Report(image=src.description)
    files: dict[str, FileRec] = {}
    contents: dict[str, bytes] = {}
    check_digests(src, report, files, contents)
    check_labels(src, lock_digest, report)
    check_python(lock, report, files, contents)
    check_debian(lock, report, files, contents)
    check_model(lock, report, files)
    return report
