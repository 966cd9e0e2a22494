"""Layer compression comes from libraries pinned with lockbuild (libzstd, zlib-ng, ISA-L), never the host's
zlib: the same tree gives the same compressed bytes on every host and every CPU (ISA-L: refused where it
cannot), gzip and zstd give the same diff_id."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from lockbuild.assemble.build import check_compressor, layer_codec
from lockbuild.errors import BuildError
from lockbuild.fetch.cache import Cache, default_cache_dir
from lockbuild.lockfile.io import dumps, loads, read_lock
from lockbuild.oci.compress import LAYER_MEDIA_TYPE, ZSTD_LAYER_MEDIA_TYPE, codec_for, compressor_version
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
GZIP_DIGEST = "sha256:45e06d911f4e023f97e94f37667948bde66a6432a09186eb5d3acfea5fc31306"  # zlib-ng 1.1.0
ISAL_DIGEST = "sha256:e2cb08154f018ffdff06e00b29a92ea56aa154ee970aaae16898e7934f89ec6c"  # isal 1.9.1, as before
ZSTD_DIGEST = "sha256:bcdb8e213a694807d69873ab4c8dca54fb91bc2ab22b968ef2e06e6f77b63e43"  # level 1: new locks
ZSTD3_DIGEST = "sha256:e48e455df6ac8a3fa2a6a144f2237492579215e3a869ee1cf3adcec7f4809437"  # zstd locks before, as before


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
    assert g.compressor == f"gzip level 1 ({compressor_version('gzip')})"
    assert g.compressor.startswith("gzip level 1 (zlib-ng 1.1.0 (zlib-ng ")  # the pinned wheel, not a host zlib
    assert z.compressor.startswith("zstd level 1 (zstandard ")


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


@pytest.mark.parametrize("encoder", ["zlib-ng", "isal", "zstandard"])
def test_compressed_bytes_do_not_depend_on_how_the_writes_are_split(encoder: str) -> None:
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
        w = zstd_writer(sink, 3) if encoder == "zstandard" else gzip_writer(sink, 1, encoder)
        while i < len(data):
            n = rnd.choice([1, 100, 512, 10240, 1 << 20, 3 << 20])
            w.write(data[i:i + n])
            i += n
        w.close()
        outs.add(sink.getvalue())
    assert len(outs) == 1
    blob = outs.pop()
    plain = gzip.decompress(blob) if encoder != "zstandard" else zstandard.ZstdDecompressor().decompress(
        blob, max_output_size=len(data))
    assert plain == data


def test_golden_digests_pin_the_compressor(staged: Path, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    g = write_layer(cache, staged, mtime=MTIME)
    i = write_layer(cache, staged, mtime=MTIME, encoder="isal")
    z = write_layer(cache, staged, mtime=MTIME, compression="zstd")
    z3 = write_layer(cache, staged, mtime=MTIME, compression="zstd", level=3)
    assert (g.digest, i.digest, z.digest, z3.digest) == (GZIP_DIGEST, ISAL_DIGEST, ZSTD_DIGEST, ZSTD3_DIGEST)
    assert i.compressor == "gzip level 1 (isal 1.9.1)"
    assert z3.compressor == f"zstd level 3 ({compressor_version('zstd')})"


def test_lock_records_compression_and_older_locks_default_to_gzip() -> None:
    lock = read_lock(EXAMPLE_LOCK)
    assert (lock.compression, lock.compressor) == ("zstd", compressor_version("zstd"))  # lock records the pin
    gz = replace(lock, compression="gzip", compressor="isal 1.9.1")  # a lock written before zlib-ng
    text = dumps(gz)
    assert "compression = " not in text and 'compressor = "isal 1.9.1"' in text
    older_text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("compressor = "))
    older = loads(older_text, "<memory>", verify_content=False)  # a lock written before the field existed
    assert (older.compression, older.compressor) == ("gzip", "")
    again = loads(dumps(lock), "<memory>", verify_content=False)
    assert (again.compression, again.compressor) == ("zstd", compressor_version("zstd"))


def test_the_lock_picks_the_encoder_and_pre_release_locks_are_refused() -> None:
    """New locks pin CPU-independent encoders (zstd level 1; gzip from zlib-ng) and record the level. The
    gzip layers of a new zstd lock (--docker-archive, --load) and --compression to the other format get
    the CPU-independent default. A lock without [image] compression-level (pre-release lockbuild) is
    refused with the way out, for either compression."""
    lock = read_lock(EXAMPLE_LOCK)
    assert lock.compression_level == 1 and layer_codec(lock, "zstd") == ("zstandard", 1)
    assert layer_codec(lock, "gzip") == ("zlib-ng", 1)
    new_gzip = replace(lock, compression="gzip", compressor=compressor_version("gzip"), compression_level=1)
    assert (layer_codec(new_gzip, "gzip"), layer_codec(new_gzip, "zstd")) == (("zlib-ng", 1), ("zstandard", 1))
    assert codec_for("gzip", "gzip", "isal 1.9.1", 1) == ("isal", 1)  # a lock naming isal: honoured
    assert codec_for("zstd", "zstd", compressor_version("zstd"), 3) == ("zstandard", 3)
    assert compressor_version("gzip").startswith("zlib-ng 1.1.0 (zlib-ng ")
    old = replace(lock, compression="gzip", compressor="isal 1.9.1", compression_level=0)
    for compression in ("gzip", "zstd"):
        with pytest.raises(BuildError, match="compression-level") as e:
            layer_codec(old, compression)
        assert "lockbuild lock" in (e.value.hint or "")
    with pytest.raises(BuildError, match="xz"):
        codec_for("xz", "gzip", "", 0)


def test_a_lock_pinning_another_compressor_version_refuses_to_build() -> None:
    lock = read_lock(EXAMPLE_LOCK)
    check_compressor(lock, "zstd")  # the example pins the installed zstandard
    check_compressor(replace(lock, compression="gzip", compressor=compressor_version("gzip")), "gzip")
    isal = replace(lock, compression="gzip", compressor="isal 1.9.1", compression_level=1)  # as locks before zlib-ng
    check_compressor(isal, "gzip")
    with pytest.raises(BuildError, match="isal 1.0.0") as e:
        check_compressor(replace(isal, compressor="isal 1.0.0"), "gzip")
    assert "isal==1.0.0" in (e.value.hint or "")
    with pytest.raises(BuildError, match="zlib-ng 1.0.0") as e:
        check_compressor(replace(lock, compression="gzip", compressor="zlib-ng 1.0.0 (zlib-ng 2.2.1)"), "gzip")
    assert "zlib-ng==1.0.0" in (e.value.hint or "")


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

    # `lockbuild smoke DIR` on a zstd layout (the default now) with Docker 20.10: the archive it loads
    # carries the zstd layers as plain tars (layout_archive(unpack_zstd=...)); the engine checks diff_ids.
    from lockbuild.oci.docker_archive import layout_archive

    (tmp_path / "plain").mkdir()
    layout_archive(tmp_path / "zstd", "lockbuild-test/h25-zstd:tiny", tmp_path / "zstd.tar",
                   unpack_zstd=tmp_path / "plain")
    try:
        subprocess.run(["docker", "load", "-i", str(tmp_path / "zstd.tar")], env=env, check=True, capture_output=True)
        image_id = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", "lockbuild-test/h25-zstd:tiny"],
                                  env=env, check=True, capture_output=True, text=True).stdout.strip()
        assert image_id == image.config_digest
        out = subprocess.run(["docker", "run", "--rm", "--network", "host", "lockbuild-test/h25-zstd:tiny"], env=env,
                             check=True, capture_output=True, text=True, timeout=120).stdout
        assert out.strip() == "zstd-ok"
    finally:
        subprocess.run(["docker", "rmi", "-f", "lockbuild-test/h25-zstd:tiny"], env=env, capture_output=True)


def test_spec_compression_key_is_validated(tmp_path: Path) -> None:
    from lockbuild.errors import SpecError
    from lockbuild.spec import parse_spec

    base = '[model]\nuri = "./model"\n\n[image]\nname = "x/y"\n'
    assert parse_spec(base, tmp_path / "lockbuild.toml").compression == "zstd"  # the CPU-independent default
    assert parse_spec(base + 'compression = "gzip"\n', tmp_path / "lockbuild.toml").compression == "gzip"
    with pytest.raises(SpecError) as e:
        parse_spec(base + 'compression = "xz"\n', tmp_path / "lockbuild.toml")
    assert "compression" in str(e.value) + str(e.value.where)


# -- the same bytes on every CPU --------------------------------------------------------------------

# qemu-x86_64 (Debian's qemu-user) CPU models and the ISA-L code path each selects at run time
# (igzip_multibinary.asm: base without SSE4.2, _01 SSE4.2, _02 AVX, _04 AVX2; the native run on an
# AVX-512 host adds the _06 encoders).
QEMU_CPUS = {"Nehalem": "SSE4.2", "SandyBridge": "AVX", "Haswell": "AVX2"}
_DIGEST_SCRIPT = """
import hashlib, io, json, sys
from pathlib import Path
from lockbuild.errors import BuildError
from lockbuild.oci.compress import gzip_writer, zstd_writer
samples = json.loads(Path(sys.argv[1]).read_text())
for enc in ("zlib-ng", "zstandard", "isal"):
    for kind, (path, size) in sorted(samples.items()):
        sink = io.BytesIO()
        try:
            w = zstd_writer(sink, 3) if enc == "zstandard" else gzip_writer(sink, 1, enc)
        except BuildError as e:
            print(enc, kind, "refused", e)
            continue
        w.write(Path(path).read_bytes())
        w.close()
        print(enc, kind, hashlib.sha256(sink.getvalue()).hexdigest(), len(sink.getvalue()), "of", size)
"""


def _files(paths: list[Path], limit: int) -> bytes:
    buf = bytearray()
    for p in paths:
        if p.is_file() and not p.is_symlink():
            buf += p.read_bytes()
            if len(buf) >= limit:
                break
    return bytes(buf[:limit])


def _samples(dest: Path, each: int = 2 << 20) -> Path:
    """A few MB of each layer kind, from real files of this host: the Debian layer (the interpreter's
    stdlib sources and ELF shared libraries), wheel layers (installed packages' code, text and .so),
    their bytecode (.pyc) and a model (float32 weights); ``dest`` gets one file per kind and an index."""
    import struct
    import sysconfig

    site = sorted(Path(sysconfig.get_paths()["purelib"]).rglob("*"))
    stdlib = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    elf = sorted(Path("/usr/lib/x86_64-linux-gnu").glob("lib*.so*")) + sorted(Path("/usr/lib").rglob("*.so*"))
    kinds = {
        "debian": _files(stdlib, each // 2) + _files(elf, each // 2),
        "wheels": _files([p for p in site if "__pycache__" not in p.parts], each),
        "pyc": _files([p for p in site if p.suffix == ".pyc"], each),
        "model": b"".join(struct.pack("<f", ((i * 2654435761) % 65521) / 65521.0 - 0.5) for i in range(each // 8))
        + bytes(each // 2),  # half weights, half zero-initialised tensors
    }
    dest.mkdir(parents=True, exist_ok=True)
    index = {}
    for kind, data in kinds.items():
        assert len(data) > 1 << 20, (kind, len(data))
        (dest / kind).write_bytes(data)
        index[kind] = (str(dest / kind), len(data))
    (dest / "index.json").write_text(json.dumps(index))
    return dest / "index.json"


def _outputs(stdout: str) -> dict[tuple[str, str], str]:
    return {tuple(line.split(" ", 2)[:2]): line.split(" ", 2)[2] for line in stdout.splitlines()}  # type: ignore[misc]


def test_compressed_bytes_are_the_same_on_every_x86_64_code_path(tmp_path: Path) -> None:
    """ISA-L, zlib-ng and libzstd dispatch to SSE4.2/AVX/AVX2/AVX-512 code at run time: the layer bytes
    must not depend on the builder's CPU. The venv's Python runs natively (AVX-512 here) and under
    qemu-x86_64 emulating older CPUs, compressing a few MB of each layer kind. zlib-ng and zstd write one
    output everywhere, x86-64 baseline (Core 2: no SSE4.2) included; ISA-L takes its portable C path
    there, which writes other bytes: its writer must refuse (the canary)."""
    import platform
    import subprocess
    import sys

    from tests.conftest_services import need_tool

    if platform.machine() != "x86_64":
        pytest.skip("x86-64 code paths: this host is " + platform.machine())
    need_tool("qemu-x86_64")
    index = _samples(tmp_path / "samples")
    script = tmp_path / "digest.py"
    script.write_text(_DIGEST_SCRIPT)

    def run(*prefix: str) -> dict[tuple[str, str], str]:
        return _outputs(subprocess.run([*prefix, sys.executable, str(script), str(index)], check=True,
                                       capture_output=True, text=True, timeout=600).stdout)

    native = run()
    assert len(native) == 12 and not any(v.startswith("refused") for v in native.values()), native
    for cpu, feature in QEMU_CPUS.items():
        assert run("qemu-x86_64", "-cpu", cpu) == native, f"{cpu} ({feature}) compressed differently"
    old = run("qemu-x86_64", "-cpu", "core2duo")  # SSSE3, no SSE4.2: x86-64 baseline, ISA-L's base C code
    assert {k: v for k, v in old.items() if k[0] != "isal"} == {k: v for k, v in native.items() if k[0] != "isal"}
    assert all(v.startswith("refused on this CPU isal") for k, v in old.items() if k[0] == "isal"), old


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


@pytest.fixture(scope="module")
def arm64_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The arm64 sysroot both emulated-arm64 tests run Debian's python3.11 from, unpacked once."""
    from tests.conftest_services import need_tool

    need_tool("qemu-aarch64", "apt-get", "dpkg-deb")
    return _arm64_sysroot(tmp_path_factory.mktemp("arm64"))


def _arm64_site(dest: Path, *requirements: str) -> Path:
    """The pinned aarch64 wheels of ``requirements`` (PyPI, through uv), for Debian's arm64 python3.11."""
    import subprocess
    import sys

    uv = Path(sys.executable).parent / "uv"
    subprocess.run([str(uv), "pip", "install", "-q", "--target", str(dest), "--python-platform",
                    "aarch64-manylinux_2_36", "--python-version", "3.11", "--only-binary", ":all:", *requirements],
                   check=True, timeout=900)
    return dest


@pytest.mark.network
def test_on_arm64_zstd_and_zlib_ng_give_the_same_bytes_and_isal_refuses(tmp_path: Path, arm64_root: Path) -> None:
    """zlib-ng and libzstd write the same bytes on arm64 as on x86-64, for every layer kind; ISA-L's
    aarch64 code (igzip/aarch64) writes other deflate streams than its x86-64 SIMD paths, so a lock that
    pins isal refuses on an arm64 builder (Graviton, Apple silicon) rather than make other digests.
    Debian's arm64 Python runs under qemu-aarch64 with the pinned aarch64 wheels from PyPI."""
    import platform
    import subprocess
    import sys
    from importlib.metadata import version

    if platform.machine() != "x86_64":
        pytest.skip("compares with the x86-64 output: this host is " + platform.machine())
    root = arm64_root  # its fixture needs qemu-aarch64, apt-get and dpkg-deb
    site = _arm64_site(tmp_path / "site", *(f"{d}=={version(d)}" for d in ("isal", "zstandard", "zlib-ng")))
    index = _samples(tmp_path / "samples")
    script = tmp_path / "digest.py"
    script.write_text(_DIGEST_SCRIPT)
    repo = Path(__file__).resolve().parents[1]

    def run(*cmd: str, env: dict[str, str] | None = None) -> dict[tuple[str, str], str]:
        return _outputs(subprocess.run([*cmd, str(script), str(index)], check=True, capture_output=True, text=True,
                                       timeout=600, env=env).stdout)

    native = run(sys.executable)
    arm = run("qemu-aarch64", "-L", str(root), str(root / "usr/bin/python3.11"),
              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{site}:{repo}", "PYTHONNOUSERSITE": "1"})
    assert {k: v for k, v in arm.items() if k[0] != "isal"} == {k: v for k, v in native.items() if k[0] != "isal"}
    assert all(v.startswith("refused on this CPU isal") for k, v in arm.items() if k[0] == "isal"), arm


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


def _arm64_lockbuild(dest: Path, root: Path) -> Path:
    """A `python3.11` for an emulated arm64 builder: Debian's arm64 interpreter under qemu-aarch64, with
    this lockbuild and the aarch64 wheels of its dependencies (the installed versions, from PyPI). It is
    a wrapper script so that the Python children lockbuild starts (sys.executable) are emulated too."""
    import re
    import tomllib
    from importlib.metadata import version

    repo = Path(__file__).resolve().parents[1]
    deps = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"]
    names = [re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0] for d in deps]
    site = _arm64_site(dest / "site", *(f"{n}=={version(n)}" for n in names))
    wrapper = dest / "python3.11"
    wrapper.write_text(f'#!/bin/sh\nexec qemu-aarch64 -0 "$0" -L {root} {root}/usr/bin/python3.11 "$@"\n')
    wrapper.chmod(0o755)
    (dest / "env").write_text(f"{site}:{repo}")
    return wrapper


@pytest.mark.slow
@pytest.mark.network
def test_an_emulated_arm64_builder_builds_the_same_image(tiny_project: dict, tmp_path: Path, arm64_root: Path) -> None:
    """`lockbuild image` on an arm64 builder and on an x86-64 baseline CPU gives the manifest digest this
    x86-64 host gives, with no refusal: Debian's arm64 Python runs lockbuild under qemu-aarch64 (every
    Python child too), then this venv's Python under qemu-x86_64 -cpu core2duo (no SSE4.2; the layers are
    compressed in that process), each from a cold layer cache (downloads hard-linked). The image's own
    amd64 programs (the bytecode compiler, ldconfig) run here natively, as they run through binfmt_misc
    (Rosetta, qemu-user-binfmt) on an arm64 machine. The tiny lock is gzip (zlib-ng): core2duo builds it
    as locked, arm64 builds the default format, zstd level 1 (--compression zstd); the samples tests above
    cover each encoder on each CPU."""
    import json
    import os
    import platform
    import shutil
    import subprocess

    from tests.conftest_services import need_tool

    if platform.machine() != "x86_64":
        pytest.skip("compares with the x86-64 build: this host is " + platform.machine())
    need_tool("qemu-aarch64", "qemu-x86_64", "apt-get", "dpkg-deb")
    downloads = default_cache_dir() / "blobs"
    work = tiny_project["dir"]

    def start(i: int, builder: tuple[str, ...], extra: tuple[str, ...], pythonpath: str) -> subprocess.Popen[str]:
        cache = tmp_path / f"cache{i}"
        shutil.copytree(downloads, cache / "blobs", copy_function=os.link)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
               "LOCKBUILD_CACHE": str(cache), **({"PYTHONPATH": pythonpath} if pythonpath else {})}
        with open(tmp_path / f"out{i}", "w") as out, open(tmp_path / f"err{i}", "w") as err:
            return subprocess.Popen([*builder, "-m", "lockbuild", "image", *extra, "--oci", str(tmp_path / f"oci{i}"),
                                     "--json"], cwd=work, env=env, stdout=out, stderr=err, text=True)

    # The two emulated builders are independent (own caches, own outputs) and each keeps about one core
    # busy: they run side by side (154 s -> ~95 s here), the arm64 one once its sysroot is ready.
    runs: list[tuple[int, subprocess.Popen[str], dict]] = []
    try:
        runs.append((1, start(1, ("qemu-x86_64", "-cpu", "core2duo", sys.executable), (), ""),  # the lock's gzip
                     tiny_project["image"]))
        python = _arm64_lockbuild(tmp_path, arm64_root)
        zstd = ("--compression", "zstd")  # the default format
        runs.append((0, start(0, (str(python),), zstd, (tmp_path / "env").read_text()), json.loads(subprocess.run(
            [sys.executable, "-m", "lockbuild", "image", *zstd, "--oci", str(tmp_path / "oci-native"), "--json"],
            cwd=work, capture_output=True, text=True, check=True, timeout=1200).stdout)))
        for i, proc, native in runs:
            assert proc.wait(timeout=3600) == 0, (tmp_path / f"err{i}").read_text()[-3000:]
            emulated = json.loads((tmp_path / f"out{i}").read_text())
            assert not any(la["reused"] for la in emulated["layers"]), "an emulated build must compress every layer"
            assert (emulated["digest"], emulated["config_digest"]) == (native["digest"], native["config_digest"]), \
                proc.args
    finally:
        for _, proc, _ in runs:
            proc.kill()
            proc.wait()
