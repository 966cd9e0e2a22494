"""`lockbuild lock --check --rederive`: a lock whose content header was recomputed after an edit is
caught by deriving it again (at its own cutoff and InRelease files) and comparing field by field;
`lockbuild lock` refuses to silently replace an unreadable lock.

Tamperings are made as an attacker would: parse the lock, change a field to another real value,
render it again with a fresh, valid `# content:` header.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lockbuild.lockfile.io import dumps, read_lock
from lockbuild.lockfile.model import Lock
from tests.lockbuild_testing import make_project, run_cli, set_model_requirements, shared_cache

SPEC = '[model]\nuri = "model"\n'
pytestmark = pytest.mark.network


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A small real project (the model logged only mlflow==3.17.2), locked once."""
    cache = shared_cache(tmp_path_factory)
    project = make_project(tmp_path_factory.mktemp("audit") / "small", SPEC)
    set_model_requirements(project / "model", ["mlflow==3.17.2"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCKBUILD_CACHE", str(cache))
        r = run_cli("lock", "--spec", str(project))
    assert r.code == 0, r.stderr
    yield project


@pytest.fixture()
def project(locked: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
            monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOCKBUILD_CACHE", str(shared_cache(tmp_path_factory)))
    return Path(shutil.copytree(locked, tmp_path / "small"))


def tamper(project: Path, edit: Callable[[Lock], Lock]) -> None:
    """Edit the lock and recompute its content header (it still reads as a valid lock)."""
    path = project / "lockbuild.lock"
    path.write_text(dumps(edit(read_lock(path))))
    read_lock(path)  # the header is valid again: only re-derivation can tell


def audit(project: Path) -> tuple[int, str, dict]:
    r = run_cli("lock", "--check", "--rederive", "--json", "--spec", str(project))
    assert "Traceback" not in r.stderr, r.stderr
    return r.code, r.text, r.json


def test_untouched_lock_rederives_field_by_field(project: Path) -> None:
    code, out, report = audit(project)
    assert code == 0, out
    assert report["genuine"] is True and report["differences"] == []


def test_swapped_wheel_is_caught(project: Path) -> None:
    def swap(lk: Lock) -> Lock:
        pkgs = list(lk.python.packages)
        i = next(i for i, w in enumerate(pkgs) if w.name == "numpy")
        other = next(w for w in pkgs if w.name == "pandas")  # another real wheel on PyPI
        pkgs[i] = dataclasses.replace(pkgs[i], url=other.url, sha256=other.sha256, size=other.size,
                                      filename=other.filename, pruned=other.pruned)  # (plain --check
        # would catch a pruned list that does not fit the swapped-in wheel)
        return dataclasses.replace(lk, python=dataclasses.replace(lk.python, packages=tuple(pkgs)))

    tamper(project, swap)
    code, out, report = audit(project)
    assert code == 17, out
    fields = {d["field"] for d in report["differences"]}
    assert {"python.packages[numpy].sha256", "python.packages[numpy].url"} <= fields
    assert "python.packages[numpy].sha256" in out and "lockbuild lock --upgrade" in out


def older_libssl3(lk: Lock) -> Lock:
    """libssl3 pinned at a version the archive never had."""
    debs = [dataclasses.replace(d, version=d.version + "~old") if d.name == "libssl3" else d
            for d in lk.debian.packages]
    return dataclasses.replace(lk, debian=dataclasses.replace(lk.debian, packages=tuple(debs)))


def test_changed_deb_version_is_caught(project: Path) -> None:
    tamper(project, older_libssl3)
    code, out, report = audit(project)
    assert code == 17, out
    assert [d["field"] for d in report["differences"]] == ["debian.packages[libssl3].version"]


def test_changed_runtime_is_caught(project: Path) -> None:
    def other_server(lk: Lock) -> Lock:
        server = "gunicorn" if lk.runtime.server == "uvicorn" else "uvicorn"
        env = (*lk.runtime.env, ("PYTHONPATH", "/tmp/evil"))
        return dataclasses.replace(lk, runtime=dataclasses.replace(lk.runtime, server=server, env=tuple(sorted(env))))

    tamper(project, other_server)
    code, _, report = audit(project)
    assert code == 17
    fields = {d["field"] for d in report["differences"]}
    assert {"runtime.server", "runtime.env.PYTHONPATH"} <= fields


def test_pruned_lists_edited_with_rules_to_match_are_caught(project: Path) -> None:
    """Rules and lists edited together stay consistent for plain `--check`; re-derivation names both."""
    from lockbuild.fetch.cache import Cache
    from lockbuild.lock import pruned

    def prune_more(lk: Lock) -> Lock:
        build = dataclasses.replace(lk.build, prune=(*lk.build.prune, "pandas/io/**"))
        lists = pruned.derive(lk.python.packages, build, pruned.site_listings(lk.python.packages, Cache()))
        pkgs = tuple(dataclasses.replace(w, pruned=lists[w.name]) for w in lk.python.packages)
        return dataclasses.replace(lk, build=build, python=dataclasses.replace(lk.python, packages=pkgs))

    tamper(project, prune_more)
    assert run_cli("lock", "--check", "--spec", str(project)).code == 0  # consistent, so only rederive tells
    code, out, report = audit(project)
    assert code == 17, out
    assert {d["field"] for d in report["differences"]} == {"build.prune", "python.packages[pandas].pruned"}


def test_forged_signer_and_inrelease_are_caught(project: Path) -> None:
    def forged_signer(lk: Lock) -> Lock:
        suites = [dataclasses.replace(s, signed_by=("0" * 40,)) for s in lk.debian.suites]
        return dataclasses.replace(lk, debian=dataclasses.replace(lk.debian, suites=tuple(suites)))

    tamper(project, forged_signer)
    code, _, report = audit(project)
    assert code == 17
    assert "debian.suites[bookworm].signed-by" in {d["field"] for d in report["differences"]}

    def other_inrelease(lk: Lock) -> Lock:
        suites = [dataclasses.replace(s, inrelease_sha256="sha256:" + "ab" * 32) if s.name == "bookworm-updates" else s
                  for s in lk.debian.suites]
        return dataclasses.replace(lk, debian=dataclasses.replace(lk.debian, suites=tuple(suites)))

    tamper(project, other_inrelease)
    r = run_cli("lock", "--check", "--rederive", "--spec", str(project))
    assert r.code == 18, r.text
    assert "bookworm-updates: the InRelease the lock recorded" in r.text and "tried: the cache" in r.text
    assert "Traceback" not in r.stderr


def test_rederive_needs_check(project: Path) -> None:
    r = run_cli("lock", "--rederive", "--spec", str(project))
    assert r.code == 3 and "--check" in r.text


def test_lock_stops_on_a_hand_edited_lock_instead_of_re_resolving(project: Path) -> None:
    path = project / "lockbuild.lock"
    edited = path.read_text().replace('version = "', 'version = "9', 1)  # content header now wrong
    path.write_text(edited)
    r = run_cli("lock", "--spec", str(project))
    assert r.code == 8, r.text
    assert "the existing lock cannot be used" in r.text and "--upgrade" in r.text and "Traceback" not in r.stderr
    assert path.read_text() == edited  # nothing written
    r = run_cli("lock", "--upgrade", "--spec", str(project))
    assert r.code == 0, r.text
    read_lock(path)


def test_lock_stops_on_a_corrupt_lock(project: Path) -> None:
    path = project / "lockbuild.lock"
    path.write_text("this is not toml = = \n")
    r = run_cli("lock", "--spec", str(project))
    assert r.code == 8 and "malformed TOML" in r.text and "--upgrade" in r.text
    assert path.read_text() == "this is not toml = = \n"


def test_lock_without_signer_fingerprints_still_audits(project: Path) -> None:
    """Locks written before `signed-by` existed parse and audit (their InRelease files are re-verified)."""
    def older_format(lk: Lock) -> Lock:
        suites = tuple(dataclasses.replace(s, signed_by=()) for s in lk.debian.suites)
        return dataclasses.replace(lk, debian=dataclasses.replace(lk.debian, suites=suites))

    tamper(project, older_format)
    assert "signed-by" not in (project / "lockbuild.lock").read_text()
    code, out, report = audit(project)
    assert code == 0, out


def test_rederive_reports_stale_inputs_first(project: Path) -> None:
    spec = project / "lockbuild.toml"
    spec.write_text(spec.read_text() + '[image]\nport = 9090\n')
    code, out, report = audit(project)
    assert code == 1, out
    assert report["fresh"] is False and any("spec edited" in r for r in report["reasons"])


def test_audit_inputs_kept_beside_the_lock_rederive_offline_with_an_empty_cache(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`export audit-inputs` keeps the signed InRelease files and the indexes (small ones whole, the big
    one as the stanzas the closure reads); with an EMPTY cache and Debian's archive unreachable the
    audit still passes from them, says which stanzas it could not check against the signed index,
    and still names an edited field. Without them it says exactly what is missing and where it is."""
    r = run_cli("export", "audit-inputs", "--json", "--spec", str(project))
    assert r.code == 0, r.text
    kept = project / "lockbuild.lock.d" / "debian"
    assert sorted(p.suffix for p in kept.iterdir()).count(".InRelease") == 3
    assert r.json["bytes"] < 2_000_000, r.json  # small enough to commit
    assert any(p.name.endswith(".stanzas.json") for p in kept.iterdir())

    monkeypatch.setenv("LOCKBUILD_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # deb.debian.org (http) unreachable; PyPI is https
    monkeypatch.delenv("LOCKBUILD_SNAPSHOT_URL", raising=False)
    monkeypatch.setattr("lockbuild.net.backoff", lambda _attempt: None)  # refused at once anyway
    code, out, report = audit(project)
    assert code == 0, out
    assert report["genuine"] is True
    assert any("kept stanzas" in n and "bookworm:" in n for n in report["notes"]), report["notes"]

    tamper(project, older_libssl3)
    code, out, report = audit(project)
    assert code == 17, out
    assert [d["field"] for d in report["differences"]] == ["debian.packages[libssl3].version"]

    shutil.rmtree(project / "lockbuild.lock.d")
    monkeypatch.setenv("LOCKBUILD_CACHE", str(tmp_path / "another-empty-cache"))
    r = run_cli("lock", "--check", "--rederive", "--spec", str(project))
    assert r.code == 18, r.text
    assert "the InRelease the lock recorded" in r.text and "lockbuild export audit-inputs" in r.text
    assert "https://snapshot.debian.org/archive/debian/" in r.text and "LOCKBUILD_SNAPSHOT_URL" in r.text


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("example", ["keras3"])
def test_shipped_example_rederives_from_its_kept_inputs_with_an_empty_cache(
        example: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit a platform team runs first, on a fresh clone: the committed example lock re-derives
    from its committed lockbuild.lock.d/ with an empty cache and Debian's archive unreachable, and an
    edited copy is caught naming the field."""
    project = Path(shutil.copytree(EXAMPLES / example, tmp_path / example,
                                   ignore=shutil.ignore_patterns("out", "*.tar")))
    monkeypatch.setenv("LOCKBUILD_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # deb.debian.org (http) unreachable; PyPI is https
    monkeypatch.delenv("LOCKBUILD_SNAPSHOT_URL", raising=False)
    monkeypatch.setattr("lockbuild.net.backoff", lambda _attempt: None)
    code, out, report = audit(project)
    assert code == 0, out
    assert report["genuine"] is True

    def other_numpy(lk: Lock) -> Lock:
        pkgs = [dataclasses.replace(w, version="1.26.4") if w.name == "numpy" else w for w in lk.python.packages]
        return dataclasses.replace(lk, python=dataclasses.replace(lk.python, packages=tuple(pkgs)))

    tamper(project, other_numpy)
    code, out, report = audit(project)
    assert code == 17, out
    assert "python.packages[numpy].version" in [d["field"] for d in report["differences"]]
