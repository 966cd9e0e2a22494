"""`lockbuild image` as an unprivileged Job would run it, with the real engine: the builder image
(scripts/builder-image.sh: a debootstrapped bookworm root, no base image pulled) as uid 65532,
--read-only, --cap-drop ALL, no-new-privileges, a tmpfs scratch, no network and no Docker socket.
It must produce the root build's digest (the tiny project's session build, as root on this host)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockbuild.fetch.cache import Cache
from lockbuild.lockfile.io import loads
from lockbuild.share.gc import needed
from tests.conftest_services import need_root, need_tool, unavailable

REPO = Path(__file__).resolve().parents[1]
UID = 65532


@pytest.fixture(scope="module")
def builder_image(docker_engine) -> str:  # type: ignore[no-untyped-def]
    need_root("debootstrap and chroot make the builder image")
    need_tool("debootstrap")
    proc = subprocess.run(["bash", str(REPO / "scripts/builder-image.sh")], capture_output=True, text=True,
                          timeout=1800)  # the engine scripts/dockerd.sh runs ($DOCKER_HOST or its socket)
    if proc.returncode != 0:
        unavailable(f"scripts/builder-image.sh failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="lockbuild-unpriv-", dir="/var/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
def test_unprivileged_container_build_gives_the_root_digest(tiny_project: dict, builder_image: str,
                                                            docker_engine, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    project = workdir / "project"
    project.mkdir()
    for name in ("lockbuild.toml", "lockbuild.lock"):
        shutil.copy(tiny_project["dir"] / name, project / name)
    shutil.copytree(tiny_project["dir"] / "model", project / "model")
    # The container has no network: its cache starts with the lock's downloads (wheels, .debs, model
    # files) and nothing else, so it builds every layer itself, ld.so.cache included.
    lock_bytes = (project / "lockbuild.lock").read_bytes()
    lock = loads(lock_bytes.decode(), "lockbuild.lock")
    session = Cache()
    cache = Cache(workdir / "cache")
    for digest in sorted(needed([(lock, lock_bytes)]).blobs):
        src = session.get(digest)
        assert src is not None, f"the session cache lacks {digest}"
        cache.put_file(src, expected_sha256=digest)
    out = workdir / "out"
    out.mkdir()
    for p in (workdir, project, out, *cache.root.rglob("*"), cache.root):
        os.chown(p, UID, UID, follow_symlinks=False)
    for p in project.rglob("*"):
        os.chown(p, UID, UID, follow_symlinks=False)

    container = docker_engine.containers.run(
        builder_image, ["image", "--lock", "/work/project/lockbuild.lock", "--oci", "/out/oci", "--json"],
        user=f"{UID}:{UID}", read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"],
        network_mode="none", tmpfs={"/scratch": f"rw,exec,size=2g,uid={UID},gid={UID},mode=0700"},
        environment={"LOCKBUILD_CACHE": "/cache", "HOME": "/scratch", "TMPDIR": "/scratch",
                     "LOCKBUILD_KEY_FILE": "/scratch/record.key"},
        volumes={str(project): {"bind": "/work/project", "mode": "ro"},
                 str(cache.root): {"bind": "/cache", "mode": "rw"}, str(out): {"bind": "/out", "mode": "rw"}},
        detach=True)
    try:
        status = container.wait(timeout=1200)
        stdout = container.logs(stdout=True, stderr=False).decode()
        stderr = container.logs(stdout=False, stderr=True).decode()
        attrs = container.attrs
    finally:
        container.remove(force=True)
    assert status["StatusCode"] == 0, stderr[-3000:]
    host = attrs["HostConfig"]
    assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
    assert not any("docker.sock" in b for b in host.get("Binds") or [])
    result = json.loads(stdout)
    assert all(not x["reused"] for x in result["layers"])  # every layer built in the container
    assert result["digest"] == tiny_project["image"]["digest"]
    assert "warnings" not in result, result["warnings"]
