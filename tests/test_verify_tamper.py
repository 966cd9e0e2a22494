"""The tamper suite: consistent, well-formed tamperings of a real image (every digest, size,
diff_id, RECORD and md5sums line recomputed, as an attacker with write access would do) are
refused by verify for every source kind (OCI dir, docker-archive, engine, registry by digest),
each with a precise finding, while the untouched image passes. verify anchors to the lock only.

All variants are made once per session from the tiny project's image. All of them are verified
from all four sources in one `lockbuild verify` run (one report per image; a layer several variants
tamper with is derived from the lock once), so the suite needs the engine (docker) and the
registry (network).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest_services import skopeo
from tests.test_verify_smoke import _blob, _file, _write_blob, repack
from tests.tiny_project import run_lockbuild

pytestmark = pytest.mark.network

SITE = "usr/local/lib/python3.11/dist-packages"
STDLIB = "usr/lib/python3.11"


def _member(layout: Path, layer_name: str, suffix: str) -> tuple[str, bytes]:
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(_blob(layout, index["manifests"][0]["digest"]).read_bytes())
    for desc in manifest["layers"]:
        if desc.get("annotations", {}).get("lockbuild.layer.name") != layer_name:
            continue
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(_blob(layout, desc["digest"]).read_bytes()))) as tar:
            for m in tar:
                if m.isreg() and m.name.endswith(suffix):
                    return m.name, tar.extractfile(m).read()  # type: ignore[union-attr]
    raise AssertionError(f"{suffix} not in layer {layer_name}")


def _replace(files: dict[str, bytes]) -> Callable:
    def mutate(m: tarfile.TarInfo, data: bytes | None) -> tuple[tarfile.TarInfo, bytes | None]:
        if m.name in files:
            data = files[m.name]
            m.size = len(data)
        return m, data
    return mutate


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


# -- the variants -------------------------------------------------------------------------------


def py_edit_with_record(layout: Path) -> None:
    name, data = _member(layout, "python", "dist-packages/click/core.py")
    new = data + b"\nimport os; os.system('id')  # injected\n"
    rname, record = _click_record(layout)
    lines = [ln if not ln.startswith("click/core.py,") else f"click/core.py,{_record_hash(new)},{len(new)}"
             for ln in record.decode().splitlines()]
    repack(layout, "python", _replace({name: new, rname: ("\n".join(lines) + "\n").encode()}))


def _click_record(layout: Path) -> tuple[str, bytes]:
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(_blob(layout, index["manifests"][0]["digest"]).read_bytes())
    desc = next(d for d in manifest["layers"] if d["annotations"]["lockbuild.layer.name"] == "python")
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(_blob(layout, desc["digest"]).read_bytes()))) as tar:
        for m in tar:
            if m.isreg() and "/click-" in m.name and m.name.endswith(".dist-info/RECORD"):
                return m.name, tar.extractfile(m).read()  # type: ignore[union-attr]
    raise AssertionError("click RECORD")


def deb_edit_with_md5sums(layout: Path) -> None:
    name, data = _member(layout, "debian", f"{STDLIB}/json/__init__.py")
    new = data.replace(b"import", b"import os;os.system('id');import", 1)
    sname, sums = _member(layout, "debian", "status.d/libpython3.11-stdlib.md5sums")
    lines = [f"{hashlib.md5(new).hexdigest()}  {STDLIB}/json/__init__.py" if ln.endswith(f"{STDLIB}/json/__init__.py")
             else ln for ln in sums.decode().splitlines()]
    repack(layout, "debian", _replace({name: new, sname: ("\n".join(lines) + "\n").encode()}))


def _add_to_layer(layer: str, path: str, data: bytes, edits: Callable[[Path], dict[str, bytes]] | None = None,
                  symlink: str | None = None) -> Callable[[Path], None]:
    def apply(layout: Path) -> None:
        replace = edits(layout) if edits else {}

        def mutate(m: tarfile.TarInfo, d: bytes | None):  # type: ignore[no-untyped-def]
            if m.name in replace:
                d = replace[m.name]
                m.size = len(d)
            if symlink is not None and m.name.rstrip("/") == path:
                link = tarfile.TarInfo(path)
                link.type, link.linkname, link.mode, link.mtime = tarfile.SYMTYPE, symlink, 0o777, m.mtime
                return link, None
            if symlink is None and m.name.rstrip("/") == path:
                return None  # an entry the packages already ship there: the attacker's file replaces it
            return m, d
        repack(layout, layer, mutate, append=[] if symlink is not None else [_file(path, data)])
    return apply


def _pth_record(layout: Path) -> dict[str, bytes]:
    rname, record = _click_record(layout)
    evil = b"import os; os.system('id')\n"
    line = f"../zzz_evil.pth,{_record_hash(evil)},{len(evil)}\n".encode()
    return {rname: record + line}


def _config(mutator: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(layout: Path) -> None:
        index = json.loads((layout / "index.json").read_text())
        manifest = json.loads(_blob(layout, index["manifests"][0]["digest"]).read_bytes())
        config = json.loads(_blob(layout, manifest["config"]["digest"]).read_bytes())
        mutator(config["config"])
        cfg = json.dumps(config).encode()
        manifest["config"].update(digest=_write_blob(layout, cfg), size=len(cfg))
        man = json.dumps(manifest).encode()
        index["manifests"][0].update(digest=_write_blob(layout, man), size=len(man))
        (layout / "index.json").write_text(json.dumps(index))
    return apply


def _launcher(layout: Path) -> None:
    name, data = _member(layout, "config", "opt/lockbuild/serve.py")
    repack(layout, "config", _replace({name: b"import os; os.system('id')\n" + data}))


EVIL = b"import os; os.system('id')\n"
# name -> (how, the finding's check, path suffix, words in the message)
VARIANTS: dict[str, tuple[Callable[[Path], None], str, str, str]] = {
    "py-edit+RECORD": (py_edit_with_record, "layer", f"{SITE}/click/core.py", "content differs"),
    "deb-edit+md5sums": (deb_edit_with_md5sums, "layer", f"{STDLIB}/json/__init__.py", "content differs"),
    "pth+RECORD": (_add_to_layer("python", f"{SITE}/zzz_evil.pth", EVIL, _pth_record), "layer",
                   f"{SITE}/zzz_evil.pth", "extra file"),
    "sitecustomize-site": (_add_to_layer("python", f"{SITE}/sitecustomize.py", EVIL), "layer",
                           f"{SITE}/sitecustomize.py", "extra file"),
    # Debian ships /usr/lib/python3.11/sitecustomize.py as a symlink into /etc: the attacker's file replaces it
    "sitecustomize-usrlib": (_add_to_layer("debian", f"{STDLIB}/sitecustomize.py", EVIL), "layer",
                             f"{STDLIB}/sitecustomize.py", "symlink replaced by a file"),
    "ld.so.preload": (_add_to_layer("debian", "etc/ld.so.preload", b"/tmp/evil.so\n"), "layer",
                      "etc/ld.so.preload", "extra file"),
    "deb-file-to-symlink": (_add_to_layer("debian", f"{STDLIB}/json/decoder.py", b"", symlink="/tmp/evil.py"),
                            "layer", f"{STDLIB}/json/decoder.py", "file replaced by a symlink"),
    "entrypoint": (_config(lambda c: c.update(Entrypoint=["/bin/sh", "-c", "id"])), "config", "config.Entrypoint",
                   "Entrypoint differs"),
    "env": (_config(lambda c: c["Env"].append("PYTHONSTARTUP=/tmp/evil.py")), "config", "config.Env", "Env differs"),
    "user": (_config(lambda c: c.update(User="0:0")), "config", "config.User", "User differs"),
    "launcher": (_launcher, "layer", "opt/lockbuild/serve.py", "content differs"),
}


# -- sources ---------------------------------------------------------------------------------------


def to_archive(layout: Path, dest: Path, tag: str) -> Path:
    from lockbuild.oci.docker_archive import layout_archive

    return layout_archive(layout, tag, dest)


@pytest.fixture(scope="session")
def variants(tiny_project: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tiny_project["dir"] / "out" / "oci"
    root = tmp_path_factory.mktemp("tampered")
    out = {"untouched": base}
    for name, (apply, *_rest) in VARIANTS.items():
        dest = root / name
        shutil.copytree(base, dest)
        for p in dest.rglob("*"):
            if p.is_file():
                p.chmod(0o644)
        apply(dest)
        out[name] = dest
    return out


def _verify(project: dict, image: str, ok: bool) -> dict:
    proc = run_lockbuild("verify", image, "--json", cwd=project["dir"], ok=ok)
    if not ok:
        assert proc.returncode == 13, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def _assert_refused(report: dict, variant: str, kind: str = "") -> None:
    _how, check, path, words = VARIANTS[variant]
    assert not report["ok"], kind
    hits = [f for f in report["findings"] if f["check"] == check and f["path"].rstrip("/").endswith(path)
            and words in f["message"]]
    assert hits, f"{variant} ({kind}): no {check} finding for {path} ({words}); got {report['findings'][:8]}"
    if check == "layer" and "extra" not in words:
        assert hits[0]["source"] and hits[0]["expected"] != hits[0]["actual"]


SOURCES = ("oci", "archive", "engine", "registry")


@pytest.fixture(scope="module")
def refused(tiny_project: dict, variants: dict[str, Path], registry: str, docker_engine,  # type: ignore[no-untyped-def]
            tiny_in_engine: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Every variant, and the untouched image, from all four sources (an OCI dir, a docker-archive, the
    engine after `docker load`, a registry by digest after `skopeo copy`) in ONE `lockbuild verify` run:
    each of the 48 images is read and judged on its own report, while a layer several variants tamper
    with is derived from the lock once for all of them. Variant -> its four reports, in SOURCES order."""
    tmp = tmp_path_factory.mktemp("sources")
    refs: dict[str, list[str]] = {}
    loaded: list[str] = []
    try:
        for variant, layout in variants.items():
            slug = variant.replace("+", "-").replace(".", "-").lower()
            archive = to_archive(layout, tmp / f"{slug}.tar", "lockbuild-test/tiny:t")  # RepoTags: the lock's name
            engine_tag = f"lockbuild-tamper/{slug}:t"
            with open(to_archive(layout, tmp / f"{slug}-engine.tar", engine_tag), "rb") as f:
                docker_engine.images.load(f)
            loaded.append(engine_tag)
            digest_file = tmp / f"{slug}.digest"
            skopeo("copy", "--dest-tls-verify=false", "--digestfile", str(digest_file), f"oci:{layout}",
                   f"docker://{registry}/tamper-{slug}:t")
            refs[variant] = [str(layout), str(archive), f"docker-daemon:{engine_tag}",
                             f"docker://{registry}/tamper-{slug}@{digest_file.read_text().strip()}"]
        every = [ref for four in refs.values() for ref in four]
        proc = run_lockbuild("verify", *every, "--json", cwd=tiny_project["dir"], ok=False)
        assert proc.returncode == 13, proc.stderr[-2000:]
    finally:
        for tag in loaded:
            docker_engine.images.remove(tag, force=True)
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and len(doc["reports"]) == len(every)
    reports = iter(doc["reports"])
    out = {variant: [next(reports) for _ in SOURCES] for variant in refs}
    for variant, four in out.items():  # one report per image, in the order given
        for ref, report in zip(refs[variant], four, strict=True):
            name = ref.removeprefix("docker-daemon:").removeprefix("docker://")
            assert name in report["image"], (ref, report["image"])
    return out


@pytest.mark.docker
@pytest.mark.parametrize("variant", ["untouched", *VARIANTS])
def test_tampered_images_are_refused_from_every_source(tiny_project: dict, refused: dict[str, list[dict]],
                                                       variant: str) -> None:
    """The variant from all four sources, each refused with the variant's own finding (the untouched
    image passes from each); all variants are verified in one run (the ``refused`` fixture)."""
    for kind, report in zip(SOURCES, refused[variant], strict=True):
        if variant == "untouched":
            assert report["ok"] and report["checked"]["layers"] == len(tiny_project["image"]["layers"]), kind
        else:
            _assert_refused(report, variant, kind)


def test_verify_key_checks_one_image(tiny_project: dict) -> None:
    proc = run_lockbuild("verify", "out/oci", "out/image.tar", "--key", "release.pub", cwd=tiny_project["dir"],
                         ok=False, env={"COLUMNS": "1000"})
    assert proc.returncode == 3 and "--key checks one image's signature; 2 images were given" in proc.stderr


# -- an archive whose two views disagree ----------------------------------------------------------------


def disagreeing_archive(good: Path, bad: Path, dest: Path, tag: str) -> Path:
    """index.json names the untouched image, manifest.json (what `docker load` reads) the tampered one."""
    bad_manifest = json.loads(_blob(bad, json.loads((bad / "index.json").read_text())["manifests"][0]["digest"])
                              .read_bytes())
    entry = [{"Config": "blobs/sha256/" + bad_manifest["config"]["digest"].split(":", 1)[1], "RepoTags": [tag],
              "Layers": ["blobs/sha256/" + d["digest"].split(":", 1)[1] for d in bad_manifest["layers"]]}]
    with tarfile.open(dest, "w") as tar:
        names = set()
        for layout in (good, bad):
            for p in sorted(layout.rglob("*")):
                rel = p.relative_to(layout).as_posix()
                if rel in names or (layout == bad and rel == "index.json"):
                    continue
                names.add(rel)
                tar.add(p, arcname=rel, recursive=False)
        data = json.dumps(entry).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return dest


@pytest.fixture()
def split_archive(variants: dict[str, Path], tmp_path: Path) -> Iterator[tuple[Path, str]]:
    tag = "lockbuild-tamper/split:t"
    yield disagreeing_archive(variants["untouched"], variants["user"], tmp_path / "split.tar", tag), tag


def test_an_archive_whose_manifests_disagree_is_refused(tiny_project: dict, split_archive: tuple[Path, str]) -> None:
    archive, _tag = split_archive
    report = _verify(tiny_project, str(archive), ok=False)
    assert any(f["check"] == "source" and "different image configs" in f["message"] for f in report["findings"])
    assert any(f["path"] == "config.User" for f in report["findings"])


@pytest.mark.docker
def test_an_archive_whose_manifests_disagree_is_refused_after_docker_load(
        tiny_project: dict, split_archive: tuple[Path, str], docker_engine,  # type: ignore[no-untyped-def]
        tiny_in_engine: str) -> None:
    archive, tag = split_archive
    with open(archive, "rb") as f:
        docker_engine.images.load(f)
    try:
        report = _verify(tiny_project, f"docker-daemon:{tag}", ok=False)
        assert any(f["path"] == "config.User" for f in report["findings"])
    finally:
        docker_engine.images.remove(tag, force=True)


def test_an_archive_whose_manifests_disagree_is_refused_from_a_registry(
        tiny_project: dict, split_archive: tuple[Path, str], registry: str, tmp_path: Path) -> None:
    archive, _tag = split_archive
    digest_file = tmp_path / "digest"
    skopeo("copy", "--dest-tls-verify=false", "--digestfile", str(digest_file), f"docker-archive:{archive}",
           f"docker://{registry}/tamper-split:t")
    report = _verify(tiny_project, f"docker://{registry}/tamper-split@{digest_file.read_text().strip()}", ok=False)
    assert any(f["path"] == "config.User" for f in report["findings"])


# -- a poisoned layer cache record ------------------------------------------------------------------


def _poison_model_record(project: dict, key_file: Path | None, cache_dir: Path | None = None) -> str:
    """Point the model layer's cache record at another well-formed blob (digests recomputed). With
    ``key_file`` the attacker also signs it (with a key that is not the machine's) and, in
    ``cache_dir`` (a cache the attacker controls, its blobs hard-linked from this machine's), every
    other layer's record as well, so that a build with that key reuses them all."""
    import os

    from lockbuild.assemble.build import LEVEL, compressed_key, source_date_epoch
    from lockbuild.assemble.plan import plan_layers
    from lockbuild.fetch.cache import Cache
    from lockbuild.lockfile.io import lock_digest, read_lock
    from lockbuild.oci.layercache import Layer, layer_record, remember_layer

    path = project["dir"] / "lockbuild.lock"
    lock = read_lock(path)
    plans = plan_layers(lock, mtime=source_date_epoch(lock), lock_digest=lock_digest(path), level=LEVEL)
    honest = {p.name: layer_record(Cache(), compressed_key(p.key, "gzip"))[0] for p in plans}
    if cache_dir is not None:
        shutil.copytree(Cache().root / "blobs", cache_dir / "blobs", copy_function=os.link)
    cache = Cache(cache_dir)
    plan = next(p for p in plans if p.kind == "model")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info, data = _file("opt/ml/model/MLmodel", b"flavors: {}\n")
        tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    blob = gzip.compress(raw, compresslevel=1, mtime=0)  # an attacker needs no level 9; 5x faster
    digest = cache.put_bytes(blob)
    layer = Layer(digest=digest, diff_id="sha256:" + hashlib.sha256(raw).hexdigest(), size=len(blob))
    old = os.environ.get("LOCKBUILD_KEY_FILE")
    try:
        if key_file is not None:
            os.environ["LOCKBUILD_KEY_FILE"] = str(key_file)
            remember_layer(cache, compressed_key(plan.key, "gzip"), layer)
            for other in plans:
                if cache_dir is not None and other is not plan and honest[other.name] is not None:
                    remember_layer(cache, compressed_key(other.key, "gzip"), honest[other.name])  # type: ignore[arg-type]
        else:
            cache.meta_put("layers", compressed_key(plan.key, "gzip").removeprefix("sha256:"), layer.to_dict())
    finally:
        if old is None:
            os.environ.pop("LOCKBUILD_KEY_FILE", None)
        else:
            os.environ["LOCKBUILD_KEY_FILE"] = old
    return digest


def test_a_poisoned_cache_record_is_not_reused_by_image(tiny_project: dict) -> None:
    bad = _poison_model_record(tiny_project, None)
    proc = run_lockbuild("image", "--oci", "out/oci-poison", cwd=tiny_project["dir"])
    assert proc.stdout.strip() == tiny_project["image"]["digest"]  # the poisoned blob was not used
    assert "layer cache record for model is not trusted" in proc.stderr and "building model" in proc.stderr
    assert bad not in (tiny_project["dir"] / "out" / "oci-poison" / "index.json").read_text()
    assert _verify(tiny_project, "out/oci-poison", ok=True)["ok"]


def test_an_image_built_from_a_record_signed_by_another_key_fails_verify(tiny_project: dict, tmp_path: Path) -> None:
    """An image built elsewhere, from a cache and a record key the attacker controls (every record
    signed with that key, the model's pointing at the attacker's blob), is refused by verify here:
    this machine's key trusts none of those records, and the model layer is derived from the lock."""
    attacker_key = tmp_path / "attacker.key"
    attacker_key.write_bytes(b"k" * 32)
    attacker_cache = tmp_path / "attacker-cache"
    bad = _poison_model_record(tiny_project, attacker_key, attacker_cache)
    proc = run_lockbuild("image", "--oci", str(tmp_path / "oci-poison2"), "--json", cwd=tiny_project["dir"],
                         env={"LOCKBUILD_KEY_FILE": str(attacker_key), "LOCKBUILD_CACHE": str(attacker_cache)})
    layers = json.loads(proc.stdout)["layers"]
    model = next(layer for layer in layers if layer["name"] == "model")
    assert model["reused"] and model["digest"] == bad  # the poisoned build
    assert all(layer["reused"] for layer in layers)  # from the attacker's signed records
    report = _verify(tiny_project, str(tmp_path / "oci-poison2"), ok=False)  # the machine's key and cache
    assert any(f["check"] == "layer" and f["path"].startswith("/opt/ml/model/") for f in report["findings"])


@pytest.mark.docker
def test_smoke_refuses_an_image_that_fails_verify(tiny_project: dict, variants: dict[str, Path],
                                                  docker_engine, tiny_in_engine: str) -> None:  # type: ignore[no-untyped-def]
    """smoke loads the file while verify reads it; the refused image runs no container and does not
    stay in the engine."""
    images = {i.id for i in docker_engine.images.list(all=True)}
    containers = {c.id for c in docker_engine.containers.list(all=True)}
    proc = run_lockbuild("smoke", str(variants["sitecustomize-site"]), "--json", cwd=tiny_project["dir"], ok=False)
    assert proc.returncode == 13
    report = json.loads(proc.stdout)
    assert report["verified"] is False and not report["ok"]
    assert "smoke refused to run" in proc.stderr
    assert {c.id for c in docker_engine.containers.list(all=True)} - containers == set()
    assert {i.id for i in docker_engine.images.list(all=True)} - images == set()
