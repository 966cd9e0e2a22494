"""Every pruned path in the lock: ``python.packages[].pruned``, compacted per wheel, derived at lock
time from the wheel's file list and the [build] rules, and checked by `lock --check`.

Real inputs: the committed example locks and the real file lists of the wheels they pin (read from
the zip central directory by range request, or the cache). Tamperings are made as an attacker
would: parse the lock, change a pruned list to another well-formed one, render it again with a
fresh, valid `# content:` header.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from lockbuild.audit.diff import diff_locks
from lockbuild.errors import LockFileError
from lockbuild.fetch.cache import Cache
from lockbuild.lock import pruned as P
from lockbuild.lock.audit import compare
from lockbuild.lockfile.io import dumps, loads, read_lock, to_dict
from lockbuild.lockfile.model import Lock, Wheel
from lockbuild.lockfile.prune import DEFAULT_PRUNE, PrunedSet, Rules, pruned_paths, site_paths
from tests.lockbuild_testing import EXAMPLES, run_cli, shared_cache

KERAS3 = EXAMPLES / "keras3"
LEGACY = EXAMPLES / "legacy-tfkeras"


def _wheel(lock: Lock, name: str) -> Wheel:
    return next(w for w in lock.python.packages if w.name == name)


def _with_pruned(lock: Lock, name: str, entries: tuple[str, ...]) -> Lock:
    pkgs = tuple(dataclasses.replace(w, pruned=entries) if w.name == name else w for w in lock.python.packages)
    return dataclasses.replace(lock, python=dataclasses.replace(lock.python, packages=pkgs))


# -- compaction ----------------------------------------------------------------------------------
PANDAS_LIKE = [
    "pandas/__init__.py",
    "pandas/tests/__init__.py",
    "pandas/tests/frame/test_api.py",
    "pandas/tests/frame/methods/test_sort.py",
    "pandas/tests/io/test_csv.py",
    "pandas/tests/io/data/csv/iris.csv",
    "pandas/tests/io/data/xml/books.xml",
    "pandas/_testing/__init__.py",
    "pandas-3.1.1.dist-info/RECORD",
    "pandas-3.1.1.dist-info/METADATA",
]


def test_a_directory_collapses_when_every_file_below_it_is_pruned() -> None:
    assert pruned_paths(PANDAS_LIKE, Rules.of(DEFAULT_PRUNE, ())) == ["pandas/tests/"]


def test_a_keep_exemption_splits_the_directory() -> None:
    rules = Rules.of(DEFAULT_PRUNE, ("pandas/tests/io/data/**",))
    assert pruned_paths(PANDAS_LIKE, rules) == [
        "pandas/tests/__init__.py",  # beside a kept directory: listed itself
        "pandas/tests/frame/",  # everything below pruned: one entry
        "pandas/tests/io/test_csv.py",
    ]
    one_file = Rules.of(DEFAULT_PRUNE, ("pandas/tests/io/data/csv/iris.csv",))
    assert pruned_paths(PANDAS_LIKE, one_file) == [
        "pandas/tests/__init__.py", "pandas/tests/frame/", "pandas/tests/io/data/xml/", "pandas/tests/io/test_csv.py"]


def test_a_directory_with_an_unpruned_file_is_never_an_entry() -> None:
    rules = Rules.of(("pkg/include/*.h",), ())  # one segment: pkg/include/sub/ stays
    files = ["pkg/include/a.h", "pkg/include/b.h", "pkg/include/sub/c.h", "pkg/__init__.py"]
    assert pruned_paths(files, rules) == ["pkg/include/a.h", "pkg/include/b.h"]
    assert pruned_paths(files[:2] + files[3:], rules) == ["pkg/include/"]


def test_metadata_is_never_pruned_even_when_a_rule_matches_it() -> None:
    rules = Rules.of(("**/*.txt", "*.dist-info/**"), ())
    files = ["demo/a.txt", "demo/b.py", "demo-1.0.dist-info/LICENSE.txt", "demo-1.0.dist-info/RECORD"]
    assert pruned_paths(files, rules) == ["demo/a.txt"]


def test_site_paths_map_members_as_the_installer_does() -> None:
    members = ["demo/__init__.py", "demo-1.0.data/purelib/demo_extra/x.py", "demo-1.0.data/platlib/_demo.so",
               "demo-1.0.data/scripts/demo", "demo-1.0.data/headers/demo.h", "demo-1.0.data/data/share/x",
               "demo/sub/", "demo-1.0.dist-info/RECORD"]
    assert site_paths(members) == ["demo/__init__.py", "demo_extra/x.py", "_demo.so", "demo-1.0.dist-info/RECORD"]


@pytest.mark.parametrize("entry", ["/usr/lib/x", "../../../bin/x", "a/../b", "a//b", "./a", "a\\b",
                                   "demo-1.0.dist-info/RECORD", "demo-1.0.dist-info/", ""])
def test_malformed_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        PrunedSet.of([entry])


def test_unmatched_names_entries_that_are_not_the_wheels() -> None:
    ps = PrunedSet.of(["pandas/tests/", "pandas/nothere.py", "numpy/"])
    assert ps.unmatched(PANDAS_LIKE) == ["numpy/", "pandas/nothere.py"]
    assert ps.matches("pandas/tests/io/data/csv/iris.csv") and ps.matches("./pandas/tests/x")
    assert not ps.matches("pandas/tests") and not ps.matches("pandas/testsx/a.py")


def test_the_list_does_not_depend_on_the_listing_order() -> None:
    files = PANDAS_LIKE * 2
    rules = Rules.of(DEFAULT_PRUNE, ("pandas/tests/io/data/**",))
    expected = pruned_paths(files, rules)
    for seed in range(5):
        random.Random(seed).shuffle(files)
        assert pruned_paths(files, rules) == expected


# -- the lock format -----------------------------------------------------------------------------
def test_example_locks_carry_the_lists_and_render_to_the_same_bytes() -> None:
    for example in (KERAS3, LEGACY, EXAMPLES / "pyfunc-sdist"):
        text = (example / "lockbuild.lock").read_text()
        lock = loads(text)
        assert lock.build.pruned_listed and dumps(lock) == text
    lock = loads((KERAS3 / "lockbuild.lock").read_text())
    assert _wheel(lock, "tensorflow-cpu").pruned == ("tensorflow/include/",)
    assert _wheel(lock, "pandas").pruned == ("pandas/tests/",)
    assert 'pruned = ["tensorflow/include/"]\n' in dumps(lock)  # one inline array per wheel


def test_a_lock_without_lists_renders_without_them_and_means_the_rules() -> None:
    lock = read_lock(KERAS3 / "lockbuild.lock")
    old = dataclasses.replace(
        lock, build=dataclasses.replace(lock.build, pruned_listed=False),
        python=dataclasses.replace(lock.python, packages=tuple(
            dataclasses.replace(w, pruned=()) for w in lock.python.packages)))
    text = dumps(old)
    assert "pruned" not in text.replace("[build]\nbytecode", "")  # neither the lists nor the flag
    back = loads(text)
    assert back == old and not back.build.pruned_listed and back.build.prune == lock.build.prune


@pytest.mark.parametrize("entry", ["../../../bin/evil", "/etc/passwd", "numpy/../../x"])
def test_the_schema_refuses_an_entry_outside_site_packages(entry: str) -> None:
    lock = read_lock(KERAS3 / "lockbuild.lock")
    with pytest.raises(LockFileError, match="pruned"):
        dumps(_with_pruned(lock, "numpy", (entry,)))


def test_a_changed_list_is_a_difference_for_diff_and_for_rederive() -> None:
    lock = read_lock(KERAS3 / "lockbuild.lock")
    edited = _with_pruned(lock, "tensorflow-cpu", ("tensorflow/include/", "tensorflow/python/"))
    changes = [c for c in diff_locks(lock, edited).changes if c.section == "build"]
    assert [(c.name, c.kind, c.old, c.new) for c in changes] == [
        ("pruned tensorflow-cpu", "changed", "1 entries", "2 entries")]
    assert "+tensorflow/python/" in changes[0].detail
    diffs = compare(to_dict(edited), to_dict(lock))  # how `lock --check --rederive` compares
    assert [d.field for d in diffs] == ["python.packages[tensorflow-cpu].pruned"]


# -- against real wheel file lists -----------------------------------------------------------------
@pytest.fixture(scope="module")
def keras3_listings(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lock, dict[str, list[str]]]:
    """The keras3 example lock and the site-packages file list of every wheel it pins (cached
    central-directory listings, else range requests to PyPI)."""
    lock = read_lock(KERAS3 / "lockbuild.lock")
    return lock, P.site_listings(lock.python.packages, Cache(shared_cache(tmp_path_factory)))


@pytest.mark.network
@pytest.mark.parametrize("keep", [(), ("tensorflow/include/tensorflow/core/**", "numpy/_core/tests/data/**",
                                       "pandas/tests/io/**", "**/conftest.py")])
def test_matching_equals_the_rules_on_every_file_of_real_wheels(
        keras3_listings: tuple[Lock, dict[str, list[str]]], keep: tuple[str, ...]) -> None:
    lock, listings = keras3_listings
    rules = Rules.of(lock.build.prune, keep)
    checked = 0
    for w in lock.python.packages:
        files = listings[w.name]
        entries = pruned_paths(files, rules)
        ps = PrunedSet.of(entries)
        assert ps.unmatched(files) == []
        for p in files:
            expected = rules.pruned(p) and not p.split("/", 1)[0].endswith(".dist-info")
            assert ps.matches(p) is expected, (w.name, p)
            checked += 1
    assert checked > 20_000


@pytest.mark.network
def test_real_lists_are_compact(keras3_listings: tuple[Lock, dict[str, list[str]]]) -> None:
    lock, listings = keras3_listings
    tf = listings["tensorflow-cpu"]
    rules = Rules.of(lock.build.prune, ())
    assert sum(1 for p in tf if rules.pruned(p)) > 10_000  # the C++ headers
    assert pruned_paths(tf, rules) == ["tensorflow/include/"]
    # a keep inside the headers splits the one entry into a handful, never into thousands of files
    split = pruned_paths(tf, Rules.of(lock.build.prune, ("tensorflow/include/tensorflow/core/framework/**",)))
    assert "tensorflow/include/tensorflow/core/framework/" not in split and 5 < len(split) < 100


@pytest.mark.network
def test_the_committed_lists_are_what_the_rules_give(keras3_listings: tuple[Lock, dict[str, list[str]]]) -> None:
    lock, listings = keras3_listings
    assert P.derive(lock.python.packages, lock.build, listings) == {w.name: w.pruned for w in lock.python.packages}
    assert P.counts(lock.python.packages, listings) == {"numpy": 536, "pandas": 1143, "tensorflow-cpu": 10976}


# -- `lock --check` catches a list edited by hand ----------------------------------------------------
@pytest.fixture()
def project(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the keras3 example (model, spec, committed lock)."""
    monkeypatch.setenv("LOCKBUILD_CACHE", str(shared_cache(tmp_path_factory)))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    dest = tmp_path / "keras3"
    shutil.copytree(KERAS3, dest, ignore=shutil.ignore_patterns(".venv*", "*.tar", "oci*"))
    return dest


def tamper(project: Path, edit: Callable[[Lock], Lock]) -> None:
    path = project / "lockbuild.lock"
    path.write_text(dumps(edit(read_lock(path))))
    read_lock(path)  # the content header is valid again


def check(project: Path) -> tuple[int, dict]:
    r = run_cli("lock", "--check", "--json", "--spec", str(project))
    assert "Traceback" not in r.stderr, r.stderr
    return r.code, r.json


@pytest.mark.network
def test_the_untouched_example_lock_checks_fresh(project: Path) -> None:
    code, report = check(project)
    assert code == 0 and report["fresh"] and report["notes"] == [], report


@pytest.mark.network
@pytest.mark.parametrize(("name", "entries", "says"), [
    ("tensorflow-cpu", ("tensorflow/include/", "tensorflow/python/"),
     "1 entry the rules do not give (tensorflow/python/)"),
    ("tensorflow-cpu", (), "1 the rules give missing (tensorflow/include/)"),  # would ship the headers
    ("numpy", ("numpy/_core/include/",), "14 the rules give missing"),
    ("six", ("six.py",), "1 entry the rules do not give (six.py)"),  # a wheel the rules leave alone
])
def test_a_hand_edited_list_is_caught(project: Path, name: str, entries: tuple[str, ...], says: str) -> None:
    tamper(project, lambda lk: _with_pruned(lk, name, entries))
    code, report = check(project)
    assert code == 1 and not report["fresh"]
    ours = [r for r in report["reasons"] if r.startswith(f"python.packages[{name}].pruned")]
    assert len(ours) == 1 and says in ours[0], report["reasons"]


@pytest.mark.network
def test_lists_without_the_flag_are_caught(project: Path) -> None:
    tamper(project, lambda lk: dataclasses.replace(lk, build=dataclasses.replace(lk.build, pruned_listed=False)))
    code, report = check(project)
    assert code == 1 and any("pruned-listed" in r for r in report["reasons"]), report


@pytest.mark.network
def test_lock_reports_files_pruned_per_wheel(project: Path) -> None:
    r = run_cli("lock", "--json", "--spec", str(project))
    assert r.code == 0, r.stderr
    assert r.json["reused"] and not r.json["changed"]
    assert r.json["pruned"] == {"files": 12655, "wheels": {
        "numpy": {"files": 536, "entries": 15}, "pandas": {"files": 1143, "entries": 1},
        "tensorflow-cpu": {"files": 10976, "entries": 1}}}


@pytest.mark.network
@pytest.mark.parametrize("name", ["numpy", "pandas"])
def test_the_list_matches_the_installed_record_as_the_rules_do(name: str, tmp_path: Path,
                                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    """site_paths maps zip members to exactly the site-packages paths the installer writes into RECORD
    (plus its own INSTALLER file), so the builder can match the recorded list against RECORD rows."""
    import posixpath

    from installer.records import parse_record_file

    from lockbuild.assemble import wheels as W
    from lockbuild.fetch.download import Item, client, fetch_all
    from lockbuild.resolve import overlap

    lock = read_lock(KERAS3 / "lockbuild.lock")
    w = _wheel(lock, name)
    cache = Cache(shared_cache(tmp_path_factory))
    blob = fetch_all(cache, [Item(urls=(w.url,), sha256=w.sha256, size=w.size, label=w.filename)])[w.sha256]
    tree = W.wheel_tree([(w, blob)], lock.target, Rules(), None, spool_dir=tmp_path)  # installed, nothing pruned
    site = W.scheme(lock.target)["purelib"].strip("/")
    try:
        record = next(n for n in tree.nodes if n.rel.startswith(site + "/") and n.rel.endswith(".dist-info/RECORD"))
        assert record.open is not None
        with record.open() as f:
            text = f.read().decode()
    finally:
        tree.close()
    dist_info = record.rel[len(site) + 1:].split("/")[0]
    rows = {posixpath.normpath(r[0]) for r in parse_record_file(text.splitlines())}
    inside = {r for r in rows if not r.startswith("../")}
    with client() as http:
        listed = set(site_paths(overlap.wheel_members(w, cache, http)))
    assert inside - listed == {f"{dist_info}/INSTALLER"} and listed <= inside
    ps, rules = PrunedSet.of(w.pruned), Rules.of(lock.build.prune, lock.build.keep)
    for r in inside:
        assert ps.matches(r) is (rules.pruned(r) and not r.startswith(dist_info + "/")), r
    assert sum(ps.matches(r) for r in inside) == {"numpy": 536, "pandas": 1143}[name]
