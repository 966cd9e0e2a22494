"""Build rules: deterministic PEP 552 bytecode compiled by the image's own interpreter, pruning with
RECORD rewritten, and wheel layers whose key and mtime do not depend on the model's lock."""

from __future__ import annotations

import base64
import csv
import dataclasses
import hashlib
import io
import random
import shutil
from pathlib import Path

import pytest

from lockbuild.assemble import bytecode as B
from lockbuild.assemble.plan import WHEEL_MTIME, plan_layers
from lockbuild.fetch.cache import Cache
from lockbuild.fetch.debs import deb_items
from lockbuild.fetch.download import fetch_all
from lockbuild.lockfile.io import dumps, loads, read_lock
from lockbuild.lockfile.model import BuildRules
from lockbuild.lockfile.prune import DEFAULT_PRUNE, Rules
from tests.test_build import install_into, make_wheel

EXAMPLE_LOCK = Path(__file__).parent.parent / "examples" / "keras3" / "lockbuild.lock"


# -- rules -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "pruned"), [
    ("tensorflow/include/Eigen/Core", True),  # extensionless C++ header
    ("tensorflow/include/tensorflow/core/framework/op.h", True),
    ("tensorflow/python/framework/ops.py", False),
    ("tensorflow/includes.py", False),
    ("numpy/_core/tests/test_umath.py", True),
    ("numpy/tests/test_public_api.py", True),  # ** matches zero directories
    ("numpy/testing/_private/utils.py", False),  # numpy.testing is imported by code: kept
    ("pandas/tests/frame/test_api.py", True),
    ("pandas/_testing/__init__.py", False),
    ("mytests/tests/x.py", False),
])
def test_default_prune_rules(path: str, pruned: bool) -> None:
    assert Rules.of(DEFAULT_PRUNE, ()).pruned(path) is pruned


def test_keep_exempts_a_path_from_pruning() -> None:
    rules = Rules.of(DEFAULT_PRUNE, ("pandas/tests/io/data/**",))
    assert rules.pruned("pandas/tests/frame/test_api.py")
    assert not rules.pruned("pandas/tests/io/data/csv/x.csv")


def test_globs_stay_within_a_segment() -> None:
    rules = Rules.of(("pkg/*.h", "a?c/**"), ())
    assert rules.pruned("pkg/x.h") and not rules.pruned("pkg/sub/x.h")
    assert rules.pruned("abc/d") and not rules.pruned("abbc/d")


# -- lock --------------------------------------------------------------------------------------
def test_lock_without_build_table_means_no_rules_and_renders_unchanged() -> None:
    text = EXAMPLE_LOCK.read_text()
    lock = loads(text)
    assert lock.build.bytecode == "unchecked-hash" and "tensorflow/include/**" in lock.build.prune
    old = dataclasses.replace(lock, build=BuildRules())
    rendered = dumps(old)
    assert "[build]" not in rendered
    assert loads(rendered).build == BuildRules()
    assert dumps(lock) == text


# -- RECORD ------------------------------------------------------------------------------------
def _record(site: Path, dist_info: str) -> dict[str, tuple[str, str]]:
    rows = csv.reader(io.StringIO((site / dist_info / "RECORD").read_text()))
    return {r[0]: (r[1], r[2]) for r in rows if r}


def _hash(p: Path) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(p.read_bytes()).digest()).rstrip(b"=").decode()


def test_pruning_rewrites_record_and_removes_empty_dirs(tmp_path: Path) -> None:
    wheel, path = make_wheel(tmp_path, "demo", "1.0", {
        "demo/__init__.py": b"X = 1\n",
        "demo/include/demo.h": b"int x;\n",
        "demo/tests/test_x.py": b"assert True\n",
    })
    root = tmp_path / "root"
    contents = install_into(root, [(wheel, path)], Rules.of(("demo/include/**", "demo/tests/**"), ()))
    site = root / "usr/local/lib/python3.11/dist-packages"
    assert [(c.pruned_files, c.sources) for c in contents] == [(2, ["demo/__init__.py"])]
    assert not (site / "demo/include").exists() and not (site / "demo/tests").exists()
    rec = _record(site, "demo-1.0.dist-info")
    assert "demo/include/demo.h" not in rec and "demo/tests/test_x.py" not in rec
    for rel, (digest, _size) in rec.items():
        if digest:
            assert _hash(site / rel) == digest, rel


# -- the target interpreter (real bookworm .debs from the example lock) ---------------------------
@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, dict[str, Path], Path]:
    lock = read_lock(EXAMPLE_LOCK)
    cache = Cache()
    blobs = fetch_all(cache, deb_items(lock.debian), jobs=4)
    tmp = tmp_path_factory.mktemp("pyc")
    return lock, blobs, tmp


def compile_into(py: B.TargetPython, tree: Path, rels: list[str]) -> dict[str, str]:
    """compile_tree, with each .pyc written beside its source in ``tree``: source rel -> .pyc rel."""
    spool = B.Spool(tree.parent / f"{tree.name}.spool")
    done = {}
    try:
        for rel, c in B.compile_tree(py, tree, rels, spool).items():
            (tree / c.rel).parent.mkdir(exist_ok=True)
            with c.open() as f:
                (tree / c.rel).write_bytes(f.read())
            done[rel] = c.rel
    finally:
        spool.close()
    return done


@pytest.mark.network
def test_pyc_bytes_do_not_depend_on_process_or_order(staged: tuple) -> None:  # type: ignore[type-arg]
    lock, blobs, tmp = staged
    py = B.target_python(lock, blobs, tmp)
    trees = []
    for n in range(2):  # the stdlib's json + email packages, copied twice, compiled in separate processes
        t = tmp / f"tree{n}"
        for pkg in ("json", "email", "asyncio"):
            shutil.copytree(py.root / "usr/lib/python3.11" / pkg, t / "usr/lib/python3.11" / pkg)
        trees.append(t)
    rels = sorted(p.relative_to(trees[0]).as_posix() for p in trees[0].rglob("*.py"))
    one = compile_into(py, trees[0], rels)
    shuffled = rels[:]
    random.Random(7).shuffle(shuffled)
    for i in range(0, len(shuffled), 9):  # other order, other grouping, many processes
        compile_into(py, trees[1], shuffled[i:i + 9])
    assert len(one) == len(rels) > 50
    for pyc in one.values():
        a, b = (trees[0] / pyc).read_bytes(), (trees[1] / pyc).read_bytes()
        assert a == b, pyc
        assert int.from_bytes(a[4:8], "little") == 0b01  # PEP 552: hash-based, not checked against the source
        assert pyc.endswith(".cpython-311.pyc") and "/__pycache__/" in pyc
    # the bytes are exactly what py_compile.compile(..., UNCHECKED_HASH) writes with that interpreter
    import subprocess

    src = trees[0] / "usr/lib/python3.11/json/decoder.py"
    ref = tmp / "ref.pyc"
    code = ("import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], dfile=sys.argv[3], "
            "doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)")
    subprocess.run([str(py.loader), "--library-path", str(py.libdir), str(py.python), "-S", "-s", "-B", "-c", code,
                    str(src), str(ref), "/usr/lib/python3.11/json/decoder.py"], check=True, cwd=tmp,
                   env={"PYTHONHOME": str(py.root / "usr"), "PYTHONHASHSEED": "0", "PATH": "/usr/bin:/bin"})
    assert ref.read_bytes() == (trees[0] / one["usr/lib/python3.11/json/decoder.py"]).read_bytes()
    # the in-image file name is compiled in, never the staging path
    sample = (trees[0] / one["usr/lib/python3.11/json/decoder.py"]).read_bytes()
    assert b"/usr/lib/python3.11/json/decoder.py" in sample and str(tmp).encode() not in sample


@pytest.mark.network
def test_wheel_bytecode_is_listed_in_record_with_its_hash(staged: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    lock, blobs, tmp = staged
    wheel, path = make_wheel(tmp_path, "demo", "1.0", {"demo/__init__.py": b"S = {'a', 'b', 'c'}\n",
                                                       "demo/broken.py": b"def (:\n"})
    root = tmp_path / "root"
    install_into(root, [(wheel, path)], Rules(), B.target_python(lock, blobs, tmp))
    site = root / "usr/local/lib/python3.11/dist-packages"
    rec = _record(site, "demo-1.0.dist-info")
    pyc = "demo/__pycache__/__init__.cpython-311.pyc"
    assert rec[pyc] == (_hash(site / pyc), str((site / pyc).stat().st_size))
    assert not (site / "demo/__pycache__/broken.cpython-311.pyc").exists()  # does not compile: no .pyc
    assert list(rec) == sorted(rec)  # installer's own RECORD writer: rows sorted by path
    assert b"/usr/local/lib/python3.11/dist-packages/demo/__init__.py" in (site / pyc).read_bytes()


# -- shared wheel layers -------------------------------------------------------------------------
def test_wheel_layer_keys_ignore_the_lock_time_and_model() -> None:
    lock = read_lock(EXAMPLE_LOCK)
    other = dataclasses.replace(lock, created="2027-01-01T00:00:00Z",
                                model=dataclasses.replace(lock.model, tree_digest="sha256:" + "1" * 64))
    a = {p.name: p.key for p in plan_layers(lock, mtime=lock.epoch(), lock_digest="sha256:a", level=1)}
    b = {p.name: p.key for p in plan_layers(other, mtime=other.epoch(), lock_digest="sha256:b", level=1)}
    shared = {n for n in a if n.startswith("python")}
    assert shared and all(a[n] == b[n] for n in shared)
    assert a["debian"] != b["debian"] and a["model"] != b["model"]
    pruned_less = dataclasses.replace(lock, build=dataclasses.replace(lock.build, keep=("pandas/tests/**",)))
    c = {p.name: p.key for p in plan_layers(pruned_less, mtime=lock.epoch(), lock_digest="sha256:a", level=1)}
    assert c["python-tensorflow-cpu"] != a["python-tensorflow-cpu"]  # the rules are part of the key
    assert WHEEL_MTIME == 315532800


# -- spec -> lock rules ----------------------------------------------------------------------------
def test_spec_build_table_becomes_the_locks_rules(tmp_path: Path) -> None:
    from lockbuild.errors import SpecError
    from lockbuild.lock.create import build_rules, default_omit
    from lockbuild.spec import load_spec

    spec_file = tmp_path / "lockbuild.toml"
    spec_file.write_text('[model]\nuri = "./model"\n')
    default = load_spec(spec_file)
    assert build_rules(default) == BuildRules("unchecked-hash", DEFAULT_PRUNE, ())
    assert default_omit(default, {"libclang", "numpy"}) == {"libclang"}
    assert default_omit(default, {"numpy"}) == set()

    spec_file.write_text('[model]\nuri = "./model"\n[python]\nrequirements = ["libclang>=18"]\n'
                         '[build]\nbytecode = false\nprune-defaults = false\nprune = ["pkg/include/**"]\n'
                         'keep = ["pkg/include/keep.h"]\n')
    custom = load_spec(spec_file)
    assert build_rules(custom) == BuildRules("none", ("pkg/include/**",), ("pkg/include/keep.h",))
    assert default_omit(custom, {"libclang"}) == set()  # defaults off
    spec_file.write_text('[model]\nuri = "./model"\n[python]\nrequirements = ["LibClang>=18"]\n')
    assert default_omit(load_spec(spec_file), {"libclang"}) == set()  # asked for by name: kept

    spec_file.write_text('[model]\nuri = "./model"\n[build]\nprune-default = false\n')
    with pytest.raises(SpecError, match="prune-default"):
        load_spec(spec_file)


def test_lock_diff_shows_build_rule_changes() -> None:
    from lockbuild.audit.diff import diff_locks

    lock = read_lock(EXAMPLE_LOCK)
    old = dataclasses.replace(lock, build=BuildRules())
    changes = {(c.section, c.name, c.kind) for c in diff_locks(old, lock).changes}
    assert ("build", "bytecode", "changed") in changes
    assert ("build", "prune tensorflow/include/**", "added") in changes
