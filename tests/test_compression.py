"""Layer compression comes from libraries pinned with lockbuild (ISA-L gzip, libzstd), never the host's
zlib: the same tree gives the same compressed bytes on every host, gzip and zstd give the same diff_id."""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from lockbuild.assemble.build import check_compressor
from lockbuild.errors import BuildError
from lockbuild.fetch.cache import Cache
from lockbuild.lock.io import dumps, loads, read_lock
from lockbuild.oci.compress import LAYER_MEDIA_TYPE, ZSTD_LAYER_MEDIA_TYPE, compressor_version
from lockbuild.oci.tar import write_layer

pytest_plugins = ["tests.conftest_services"]

MTIME = 1795564800
EXAMPLE_LOCK = Path(__file__).resolve().parents[1] / "examples/keras3/lockbuild.lock"


def tree(root: Path) -> Path:
    """A few MB of mixed content (text, random-ish, zeros), enough for several deflate blocks."""
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/zeros.bin").write_bytes(b"\0" * (1 << 20))
    (root / "usr/lib/text.py").write_bytes(b"".join(b"def f%d(x):\n    return x * %d\n" % (i, i) for i in range(40000)))
    (root / "usr/lib/noise.bin").write_bytes(b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(40000)))
    return root


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tree(tmp_path_factory.mktemp("tree") / "root")


# Golden digests: they change only when the pinned compressor (pyproject.toml) or the tar recipe does.
# A host zlib (1.2.13 on bookworm, 1.3.1 on trixie, zlib-ng elsewhere) could not make them reproducible.
GZIP_DIGEST = "sha256:e2cb08154f018ffdff06e00b29a92ea56aa154ee970aaae16898e7934f89ec6c"
ZSTD_DIGEST = "sha256:e48e455df6ac8a3fa2a6a144f2237492579215e3a869ee1cf3adcec7f4809437"


def test_gzip_and_zstd_carry_the_same_tar(staged: Path, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    g = write_layer(cache, staged, mtime=MTIME)
    z = write_layer(cache, staged, mtime=MTIME, compression="zstd")
    assert g.diff_id == z.diff_id and g.digest != z.digest
    assert (g.media_type, z.media_type) == (LAYER_MEDIA_TYPE, ZSTD_LAYER_MEDIA_TYPE)
    tar_g = gzip.decompress(g.path(cache).read_bytes())
    tar_z = zstandard.ZstdDecompressor().stream_reader(z.path(cache).open("rb"),
                                                       read_across_frames=True).read()
    assert tar_g == tar_z and "sha256:" + hashlib.sha256(tar_g).hexdigest() == g.diff_id
    assert "zlib" not in g.compressor and g.compressor == f"gzip level 1 ({compressor_version('gzip')})"
    assert z.compressor.startswith("zstd level 3 (zstandard ")


def test_zstd_frame_has_no_content_size_checksum_or_dictionary(staged: Path, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    z = write_layer(cache, staged, mtime=MTIME, compression="zstd")
    params = zstandard.get_frame_parameters(z.path(cache).read_bytes()[:18])
    assert (params.content_size, params.has_checksum, params.dict_id) == (zstandard.CONTENTSIZE_UNKNOWN, False, 0)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_compressed_bytes_are_the_same_in_parallel_threads_and_any_umask(staged: Path, tmp_path: Path,
                                                                         compression: str) -> None:
    """Layers are compressed in parallel threads: the bytes must not depend on it."""
    digests: list[str] = []

    def one(i: int) -> None:
        digests.append(write_layer(Cache(tmp_path / f"c{i}"), staged, mtime=MTIME, compression=compression).digest)

    old = os.umask(0o077)
    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        os.umask(old)
    one(3)
    assert len(set(digests)) == 1, digests


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_compressed_bytes_do_not_depend_on_how_the_writes_are_split(compression: str) -> None:
    """ISA-L's output depends on the input's call boundaries, and the tar writer's write sizes differ
    between Python versions (a trixie host, Python 3.13, gave other layer digests before chunking):
    the compressor must see the same chunks whatever the caller's write pattern."""
    import io
    import random

    from lockbuild.oci.compress import gzip_writer, zstd_writer

    data = b"".join(hashlib.sha256(b"%d" % (i // 7)).hexdigest().encode() for i in range(100000))
    outs = set()
    for seed in range(4):
        rnd, sink, i = random.Random(seed), io.BytesIO(), 0
        w = zstd_writer(sink) if compression == "zstd" else gzip_writer(sink, 1)
        while i < len(data):
            n = rnd.choice([1, 100, 512, 10240, 1 << 20, 3 << 20])
            w.write(data[i:i + n])
            i += n
        w.close()
        outs.add(sink.getvalue())
    assert len(outs) == 1
    blob = outs.pop()
    plain = gzip.decompress(blob) if compression == "gzip" else zstandard.ZstdDecompressor().decompress(
        blob, max_output_size=len(data))
    assert plain == data


def test_golden_digests_pin_the_compressor(staged: Path, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    g = write_layer(cache, staged, mtime=MTIME)
    z = write_layer(cache, staged, mtime=MTIME, compression="zstd")
    assert (g.digest, z.digest) == (GZIP_DIGEST, ZSTD_DIGEST)


def test_lock_records_compression_and_older_locks_default_to_gzip() -> None:
    lock = read_lock(EXAMPLE_LOCK)
    assert (lock.compression, lock.compressor) == ("gzip", compressor_version("gzip"))  # lock records the pin
    older_text = "\n".join(ln for ln in dumps(lock).splitlines() if not ln.startswith("compressor = "))
    older = loads(older_text, "<memory>", verify_content=False)  # a lock written before the field existed
    assert (older.compression, older.compressor) == ("gzip", "")
    zl = replace(lock, compression="zstd", compressor=compressor_version("zstd"))
    text = dumps(zl)
    assert 'compression = "zstd"' in text and "compressor = " in text
    again = loads(text, "<memory>", verify_content=False)
    assert (again.compression, again.compressor) == ("zstd", compressor_version("zstd"))


def test_a_lock_pinning_another_compressor_version_refuses_to_build() -> None:
    lock = read_lock(EXAMPLE_LOCK)
    check_compressor(replace(lock, compressor=compressor_version("gzip")), "gzip")  # the pinned one: fine
    check_compressor(replace(lock, compressor=""), "gzip")  # older lock: nothing recorded, nothing to check
    with pytest.raises(BuildError, match="isal 1.0.0") as e:
        check_compressor(replace(lock, compressor="isal 1.0.0"), "gzip")
    assert "isal==1.0.0" in (e.value.hint or "")


# -- a zstd image through the independent tools ---------------------------------------------------


UMOCI_ZSTD = Path("/usr/local/lib/lockbuild/umoci/umoci")  # umoci 0.6 from trixie-backports (install-deps.sh)


def _umoci_version(cmd: str) -> tuple[int, ...]:
    import re
    import subprocess

    out = subprocess.run([cmd, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.match(r"umoci version (\d+)\.(\d+)", out)
    assert m, out
    return (int(m[1]), int(m[2]))


def umoci_with_zstd() -> str:
    """A umoci that unpacks tar+zstd (>= 0.5): the system one if new enough, else install-deps.sh's."""
    import shutil

    for cmd in (shutil.which("umoci"), str(UMOCI_ZSTD) if UMOCI_ZSTD.is_file() else None):
        if cmd and _umoci_version(cmd) >= (0, 5):
            return cmd
    from tests.conftest_services import unavailable

    unavailable(f"no umoci >= 0.5 (zstd layers): run scripts/install-deps.sh (installs {UMOCI_ZSTD})")


def unpacked_tree(umoci: str, layout: str, bundle: Path) -> dict[str, tuple[object, ...]]:
    """``umoci unpack`` (which checks every diff_id itself), then every path's type, mode and content."""
    import stat
    import subprocess

    subprocess.run([umoci, "unpack", "--rootless", "--image", layout, str(bundle)], check=True,
                   capture_output=True, text=True, timeout=120)
    root, out = bundle / "rootfs", {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        kind = (os.readlink(p) if stat.S_ISLNK(st.st_mode) else
                hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else "dir")
        out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), int(st.st_mtime), kind)
    return out


@pytest.mark.docker
def test_zstd_layout_passes_skopeo_and_umoci_and_survives_a_registry_round_trip(
        tmp_path: Path, registry: str, docker_engine: object) -> None:
    """The zstd OCI layout of a tree and the gzip layout of the same tree, checked by independent tools:
    skopeo inspects and copies the zstd layout; umoci >= 0.5 unpacks it, before and after a registry
    round trip, into exactly the tree it unpacks from the gzip layout. Debian's umoci 0.4.7 (bookworm,
    trixie) refuses tar+zstd with "blob is not correct mediatype" (asserted when that is the system
    umoci); the second path works with it: skopeo converts the pulled zstd image to gzip, 0.4.7 unpacks
    that into the same tree, and it loads into Docker 20.10 (which cannot load zstd) with our config
    digest as image ID and runs."""
    import json
    import shutil
    import subprocess

    from lockbuild.oci.image import ImageSpec, build_image
    from lockbuild.oci.layout import write_oci_layout
    from lockbuild.oci.registry import push
    from tests.conftest_services import BUSYBOX, need_tool, skopeo, unavailable

    if not BUSYBOX.is_file():
        unavailable("busybox-static missing: run scripts/install-deps.sh")
    need_tool("umoci")
    umoci = umoci_with_zstd()
    staging = tree(tmp_path / "root")
    (staging / "bin").mkdir()
    (staging / "bin/busybox").write_bytes(BUSYBOX.read_bytes())
    os.chmod(staging / "bin/busybox", 0o755)
    (staging / "bin/sh").symlink_to("busybox")
    (staging / "tmp").mkdir()
    os.chmod(staging / "tmp", 0o1777)
    cache = Cache(tmp_path / "cache")
    spec = ImageSpec(env={"PATH": "/bin"}, entrypoint=("/bin/busybox",), cmd=("echo", "zstd-ok"))
    images = {}
    for comp in ("gzip", "zstd"):
        layer = write_layer(cache, staging, mtime=MTIME, compression=comp)
        images[comp] = build_image([("tiny", layer)], config=spec, created="2026-11-25T00:00:00Z", annotations={})
        write_oci_layout(images[comp], tmp_path / comp, cache, ref_name="t")
    image = images["zstd"]
    assert image.config_digest == images["gzip"].config_digest

    raw = json.loads(skopeo("inspect", "--raw", f"oci:{tmp_path / 'zstd'}:t"))
    assert raw["layers"][0]["mediaType"] == ZSTD_LAYER_MEDIA_TYPE
    skopeo("copy", f"oci:{tmp_path / 'zstd'}:t", f"oci:{tmp_path / 'copy'}:t")
    assert json.loads((tmp_path / "copy/index.json").read_text())["manifests"][0]["digest"] == image.manifest_digest

    reference = unpacked_tree(umoci, f"{tmp_path / 'gzip'}:t", tmp_path / "u-gzip")
    assert {"bin/busybox", "bin/sh", "tmp", "usr/lib/noise.bin"} <= set(reference)
    assert unpacked_tree(umoci, f"{tmp_path / 'zstd'}:t", tmp_path / "u-zstd") == reference
    system = shutil.which("umoci")
    if system and _umoci_version(system) < (0, 5):  # the documented limit of Debian's umoci 0.4.7
        r = subprocess.run([system, "unpack", "--rootless", "--image", f"{tmp_path / 'zstd'}:t",
                            str(tmp_path / "u-old")], capture_output=True, text=True, timeout=120)
        assert r.returncode != 0
        assert f"blob is not correct mediatype: {ZSTD_LAYER_MEDIA_TYPE}" in r.stderr

    ref = f"{registry}/h13-zstd:tiny"
    push(image, ref, cache)
    assert json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}"))["Digest"] == image.manifest_digest
    skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{tmp_path / 'pulled'}:t")
    pulled = json.loads((tmp_path / "pulled/index.json").read_text())["manifests"][0]["digest"]
    assert pulled == image.manifest_digest
    assert unpacked_tree(umoci, f"{tmp_path / 'pulled'}:t", tmp_path / "u-pulled") == reference

    # The second path, for hosts with umoci 0.4.7 only: convert to gzip (skopeo), then unpack and run.
    skopeo("copy", "--src-tls-verify=false", "--dest-compress-format", "gzip", f"docker://{ref}",
           f"oci:{tmp_path / 'gz'}:t")
    gz = json.loads(skopeo("inspect", "--raw", f"oci:{tmp_path / 'gz'}:t"))
    assert gz["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert gz["config"]["digest"] == image.config_digest  # same diff_ids, so the same config
    assert unpacked_tree(system or umoci, f"{tmp_path / 'gz'}:t", tmp_path / "u-gz") == reference

    host = os.environ.get("DOCKER_HOST", "unix:///run/lockbuild-docker.sock")
    tag = "lockbuild-test/h13-zstd:tiny"
    skopeo("copy", "--dest-daemon-host", host, f"oci:{tmp_path / 'gz'}:t", f"docker-daemon:{tag}")
    env = {**os.environ, "DOCKER_HOST": host}
    try:
        image_id = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", tag], env=env, check=True,
                                  capture_output=True, text=True).stdout.strip()
        assert image_id == image.config_digest
        out = subprocess.run(["docker", "run", "--rm", "--network", "host", tag], env=env, check=True,
                             capture_output=True, text=True, timeout=120).stdout
        assert out.strip() == "zstd-ok"
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], env=env, capture_output=True)


def test_spec_compression_key_is_validated(tmp_path: Path) -> None:
    from lockbuild.errors import SpecError
    from lockbuild.spec import parse_spec

    base = '[model]\nuri = "./model"\n\n[image]\nname = "x/y"\n'
    assert parse_spec(base, tmp_path / "lockbuild.toml").compression == "gzip"
    assert parse_spec(base + 'compression = "zstd"\n', tmp_path / "lockbuild.toml").compression == "zstd"
    with pytest.raises(SpecError) as e:
        parse_spec(base + 'compression = "xz"\n', tmp_path / "lockbuild.toml")
    assert "compression" in str(e.value) + str(e.value.where)


# -- the same bytes on every CPU --------------------------------------------------------------------

# qemu-x86_64 (Debian's qemu-user) CPU models and the ISA-L code path each selects at run time
# (igzip_multibinary.asm: base without SSE4.2, _01 SSE4.2, _02 AVX, _04 AVX2; the native run on an
# AVX-512 host adds the _06 encoders).
QEMU_CPUS = {"Nehalem": "SSE4.2", "SandyBridge": "AVX", "Haswell": "AVX2"}
_DIGEST_SCRIPT = """
import hashlib, io, sys
from pathlib import Path
from lockbuild.errors import BuildError
from lockbuild.oci.compress import gzip_writer, zstd_writer
data = Path(sys.argv[1]).read_bytes()
for name in ("gzip", "zstd"):
    sink = io.BytesIO()
    try:
        w = gzip_writer(sink, 1) if name == "gzip" else zstd_writer(sink)
    except BuildError as e:
        print(name, "refused", e)
        continue
    w.write(data)
    w.close()
    print(name, hashlib.sha256(sink.getvalue()).hexdigest(), len(sink.getvalue()))
"""


def _real_data(limit: int = 20 << 20) -> bytes:
    """The first 20 MB of the installed packages' files (code, text, shared libraries), sorted."""
    import sysconfig

    buf = bytearray()
    for p in sorted(Path(sysconfig.get_paths()["purelib"]).rglob("*")):
        if p.is_file() and not p.is_symlink() and "__pycache__" not in p.parts:
            buf += p.read_bytes()
            if len(buf) >= limit:
                break
    return bytes(buf[:limit])


def test_compressed_bytes_are_the_same_on_every_x86_64_code_path(tmp_path: Path) -> None:
    """ISA-L and libzstd dispatch to SSE4.2/AVX/AVX2/AVX-512 code at run time: the layer bytes must
    not depend on the builder's CPU. The venv's Python runs natively and under qemu-x86_64 emulating
    older CPUs, compressing 20 MB of real files. A CPU without SSE4.2 makes ISA-L take its portable C
    path, which writes other bytes: there the gzip writer must refuse (zstd stays identical)."""
    import platform
    import subprocess
    import sys

    from tests.conftest_services import need_tool

    if platform.machine() != "x86_64":
        pytest.skip("x86-64 code paths: this host is " + platform.machine())
    need_tool("qemu-x86_64")
    data = tmp_path / "data.bin"
    data.write_bytes(_real_data())
    script = tmp_path / "digest.py"
    script.write_text(_DIGEST_SCRIPT)

    def run(*prefix: str) -> dict[str, str]:
        out = subprocess.run([*prefix, sys.executable, str(script), str(data)], check=True, capture_output=True,
                             text=True, timeout=300).stdout
        return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines()}

    native = run()
    assert not native["gzip"].startswith("refused"), native
    for cpu, feature in QEMU_CPUS.items():
        assert run("qemu-x86_64", "-cpu", cpu) == native, f"{cpu} ({feature}) compressed differently"
    old = run("qemu-x86_64", "-cpu", "core2duo")  # SSSE3, no SSE4.2: ISA-L's base C code
    assert old["zstd"] == native["zstd"]
    assert old["gzip"].startswith("refused on this CPU isal"), old


ARM64_PYTHON_DEBS = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libexpat1",
                     "zlib1g", "libssl3", "libffi8", "libgcc-s1", "libbz2-1.0", "liblzma5", "libcrypt1",
                     "libstdc++6", "libuuid1", "libtinfo6", "libncursesw6")


def _arm64_sysroot(dest: Path) -> Path:
    """Debian bookworm's arm64 python3.11 and its libraries unpacked into ``dest`` (apt with a private
    state directory, signatures checked against the archive keyring; the host's apt is untouched)."""
    import subprocess

    state = dest / "apt"
    for d in ("lists/partial", "cache/archives/partial", "debs"):
        (state / d).mkdir(parents=True)
    (state / "status").touch()
    (state / "sources.list").write_text("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                                        "http://deb.debian.org/debian bookworm main\n")
    opts = [f"-oDir::Etc::sourcelist={state}/sources.list", "-oDir::Etc::sourceparts=/nonexistent",
            f"-oDir::State::Lists={state}/lists", f"-oDir::Cache={state}/cache", f"-oDir::State::status={state}/status",
            "-oAPT::Architecture=arm64", "-oAPT::Architectures=arm64", "-oAPT::Sandbox::User=root",
            "-oDebug::NoLocking=1"]
    subprocess.run(["apt-get", "-qq", *opts, "update"], check=True, capture_output=True, timeout=600)
    subprocess.run(["apt-get", "-qq", *opts, "download", *ARM64_PYTHON_DEBS], cwd=state / "debs", check=True,
                   capture_output=True, timeout=600)
    root = dest / "root"
    for deb in sorted((state / "debs").glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


@pytest.mark.network
def test_on_arm64_isal_refuses_and_zstd_gives_the_same_bytes(tmp_path: Path) -> None:
    """ISA-L's aarch64 code (igzip/aarch64) writes other deflate streams than its x86-64 SIMD paths, so
    an arm64 builder (Graviton, Apple silicon) must refuse gzip layers rather than make other digests;
    libzstd's bytes are the same there. Debian's arm64 Python runs under qemu-aarch64 with the pinned
    isal and zstandard aarch64 wheels from PyPI."""
    import platform
    import subprocess
    import sys
    from importlib.metadata import version

    from tests.conftest_services import need_tool

    if platform.machine() != "x86_64":
        pytest.skip("compares with the x86-64 output: this host is " + platform.machine())
    need_tool("qemu-aarch64", "apt-get", "dpkg-deb")
    root = _arm64_sysroot(tmp_path / "arm64")
    site = tmp_path / "site"
    uv = Path(sys.executable).parent / "uv"
    subprocess.run([str(uv), "pip", "install", "-q", "--target", str(site), "--python-platform",
                    "aarch64-manylinux_2_36", "--python-version", "3.11", "--only-binary", ":all:",
                    f"isal=={version('isal')}", f"zstandard=={version('zstandard')}"], check=True, timeout=600)
    data = tmp_path / "data.bin"
    data.write_bytes(_real_data(8 << 20))
    script = tmp_path / "digest.py"
    script.write_text(_DIGEST_SCRIPT)
    repo = Path(__file__).resolve().parents[1]

    def run(*cmd: str, env: dict[str, str] | None = None) -> dict[str, str]:
        out = subprocess.run([*cmd, str(script), str(data)], check=True, capture_output=True, text=True,
                             timeout=300, env=env).stdout
        return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines()}

    native = run(sys.executable)
    arm = run("qemu-aarch64", "-L", str(root), str(root / "usr/bin/python3.11"),
              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{site}:{repo}", "PYTHONNOUSERSITE": "1"})
    assert arm["zstd"] == native["zstd"]
    assert arm["gzip"].startswith("refused on this CPU isal"), arm


@pytest.mark.network
def test_compression_override_on_a_gzip_lock_builds_zstd_with_the_same_config(tiny_project: dict,
                                                                             tmp_path: Path) -> None:
    """`lockbuild image --compression zstd` on a lock that pins its gzip compressor (isal): the override
    is not held to the isal pin (it refused before), and gives the same diff_ids and config."""
    import json
    import tomllib

    from tests.tiny_project import run_lockbuild

    lock = tomllib.loads((tiny_project["dir"] / "lockbuild.lock").read_text())
    assert lock["image"]["compressor"] == compressor_version("gzip")
    out = json.loads(run_lockbuild("image", "--compression", "zstd", "--oci", str(tmp_path / "oci"), "--json",
                                   cwd=tiny_project["dir"]).stdout)
    gz = tiny_project["image"]
    assert out["config_digest"] == gz["config_digest"] and out["digest"] != gz["digest"]
    assert [la["diff_id"] for la in out["layers"]] == [la["diff_id"] for la in gz["layers"]]
    manifest_digest = json.loads((tmp_path / "oci/index.json").read_text())["manifests"][0]["digest"]
    manifest = json.loads((tmp_path / "oci/blobs/sha256" / manifest_digest.split(":")[1]).read_text())
    assert {la["mediaType"] for la in manifest["layers"]} == {ZSTD_LAYER_MEDIA_TYPE}
