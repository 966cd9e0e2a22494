"""Every way an MLflow model carries its dependencies, locked for real (uv, PyPI, Debian's archive):
requirements.txt with -c constraints, --index-url / --extra-index-url lines (credentials never
recorded), wheels bundled in the model (add_libraries_to_model's wheels/ + requirements pointing at
them), conda.yaml-only models (older MLflow), and the lines lockbuild refuses (-e, VCS/URL, includes
and paths outside the model): one line naming file:line and the fix, exit code 21, nothing written.

The base model is examples/pyfunc-sdist (MLflow 3.17.2 defaults; docopt is sdist-only on PyPI)."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest
import yaml

from lockbuild.errors import RequirementsError
from lockbuild.fetch.cache import Cache
from lockbuild.fetch.download import Item, fetch_all
from lockbuild.fsutil import sha256_file
from lockbuild.model.metadata import read_model, strip_userinfo
from tests.lockbuild_testing import EXAMPLES, finish, lockbuild_process, set_model_python, shared_cache
from tests.test_build import make_wheel

pytestmark = [pytest.mark.network]

PYFUNC = EXAMPLES / "pyfunc-sdist"
SPEC = '[model]\nuri = "model"\n\n[python]\nexclude-newer = "2026-11-29T00:00:00Z"\n'
SIX = Item(urls=("https://files.pythonhosted.org/packages/b7/ce/149a00dd41f10bc29e5921b496af8b574d8413afcd5e30dfa0ed"
                 "46c2cc5e/six-1.17.0-py2.py3-none-any.whl",),
           sha256="sha256:4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274", size=11050, label="six")


def project(root: Path, name: str, spec: str = SPEC) -> Path:
    d = root / name
    shutil.copytree(PYFUNC / "model", d / "model")
    (d / "lockbuild.toml").write_text(spec)
    return d


def append_requirements(d: Path, *lines: str) -> None:
    req = d / "model" / "requirements.txt"
    text = req.read_text()  # MLflow writes no final newline
    req.write_text(text + ("" if text.endswith("\n") else "\n") + "".join(f"{ln}\n" for ln in lines))


# -- bad requirement lines: one clear line, exit 21, nothing written ------------------------------
BAD = {
    "include-outside": (["-r /etc/hostname"], "`-r /etc/hostname` includes /etc/hostname, which is outside the "
                                              "model directory (requirements.txt:5)"),
    "constraint-outside": (["-c ../../constraints.txt"], "outside the model directory"),
    "editable": (["-e ./src"], "editable requirement `-e ./src` cannot be locked (requirements.txt:5)"),
    "vcs": (["git+https://github.com/docopt/docopt.git@0.6.2#egg=docopt"], "is a VCS/URL requirement"),
    "url": (["docopt @ https://files.pythonhosted.org/packages/a2/55/8f8cab2afd404cf578136ef2cc5dfb50baa1761b68c9"
             "da1fb1e4eed343c9/docopt-0.6.2.tar.gz"], "is a VCS/URL requirement"),
    "wheel-outside": (["../six-1.17.0-py2.py3-none-any.whl"], "outside the model directory"),
    "local-dir": (["./code"], "is a local path, not a wheel file in the model"),
    "invalid": (["pandas>>3"], "`pandas>>3` is not a valid requirement"),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    root = tmp_path_factory.mktemp("bad-reqs")
    env: dict[str, str | None] = {"LOCKBUILD_CACHE": str(shared_cache(tmp_path_factory))}
    procs = {}
    for name, (lines, _) in BAD.items():
        d = project(root, name)
        append_requirements(d, *lines)
        procs[name] = (d, lockbuild_process("lock", cwd=d, env=env))
    return {name: (d, finish(p, timeout=300)) for name, (d, p) in procs.items()}


@pytest.mark.parametrize("case", sorted(BAD))
def test_unpinnable_requirement_lines_are_refused_with_file_line_and_fix(
        bad_runs: dict[str, tuple[Path, object]], case: str) -> None:
    d, r = bad_runs[case]
    assert r.code == RequirementsError.exit_code == 21, r.stderr  # type: ignore[attr-defined]
    err = " ".join(r.stderr.split())  # type: ignore[attr-defined]
    assert "Traceback" not in err and BAD[case][1] in err, err
    assert "requirements: " in r.stderr and "hint: " in r.stderr  # type: ignore[attr-defined]
    assert not (d / "lockbuild.lock").exists()
    assert sorted(p.name for p in d.iterdir()) == ["lockbuild.toml", "model"]


def test_hostname_is_never_read_into_anything(bad_runs: dict[str, tuple[Path, object]]) -> None:
    _, r = bad_runs["include-outside"]
    hostname = Path("/etc/hostname").read_text().strip()
    assert hostname not in r.stdout  # type: ignore[attr-defined]


def test_userinfo_is_stripped_from_index_urls() -> None:
    assert strip_userinfo("https://u:p@h.example:8443/simple/") == "https://h.example:8443/simple/"
    assert strip_userinfo("https://token@h.example/simple") == "https://h.example/simple"
    assert strip_userinfo("https://h.example/simple") == "https://h.example/simple"


# -- carriers that lock -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def carriers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    """One real `lockbuild lock` per carrier, started together."""
    root = tmp_path_factory.mktemp("carriers")
    cache = shared_cache(tmp_path_factory)
    env: dict[str, str | None] = {"LOCKBUILD_CACHE": str(cache)}
    dirs = {}

    d = dirs["constraints"] = project(root, "constraints")
    append_requirements(d, "-c constraints.txt")
    (d / "model" / "constraints.txt").write_text("idna<3.10\n")

    d = dirs["index"] = project(root, "index")
    req = d / "model" / "requirements.txt"
    req.write_text("--index-url https://lockbuild:s3cr3t-token@pypi.org/simple\n"
                   "--extra-index-url https://__token__:s3cr3t-extra@pypi.org/simple/\n" + req.read_text())

    # add_libraries_to_model's layout: wheels/ + requirement lines naming them. Neither wheel is in the
    # cache the lock runs with (a private one never is), as on a user's first `lock`.
    d = dirs["bundled"] = project(root, "bundled")
    six = fetch_all(Cache(root / "elsewhere"), [SIX])[SIX.sha256]
    (d / "model" / "wheels").mkdir()
    shutil.copyfile(six, d / "model" / "wheels" / "six-1.17.0-py2.py3-none-any.whl")
    _, private = make_wheel(d / "model" / "wheels", "acme-features", "0.1",
                            {"acme_features/__init__.py": f"NONCE = {str(root)!r}\n".encode()})
    append_requirements(d, "wheels/six-1.17.0-py2.py3-none-any.whl", f"wheels/{private.name}")

    d = dirs["conda-only"] = project(root, "conda-only")  # the layout MLflow 1.x wrote
    (d / "model" / "requirements.txt").unlink()
    (d / "model" / "python_env.yaml").unlink()
    mlmodel = yaml.safe_load((d / "model" / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"]["env"] = "conda.yaml"
    (d / "model" / "MLmodel").write_text(yaml.safe_dump(mlmodel))

    d = dirs["python-override"] = project(root, "python-override", SPEC + '\n[target]\npython = "3.11"\n')
    set_model_python(d / "model", "3.10.12")

    procs = {name: lockbuild_process("lock", cwd=d, env=env) for name, d in dirs.items()}
    return {name: (dirs[name], finish(p, timeout=600)) for name, p in procs.items()}


def _lock(carriers: dict[str, tuple[Path, object]], name: str) -> tuple[dict, str]:
    d, r = carriers[name]
    assert r.code == 0, r.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in r.stderr  # type: ignore[attr-defined]
    text = (d / "lockbuild.lock").read_text()
    return tomllib.loads(text), text


def _pkg(lock: dict, name: str) -> dict:
    return next(p for p in lock["python"]["packages"] if p["name"] == name)


def test_source_only_dependency_of_a_default_logged_pyfunc_is_built(carriers: dict[str, tuple[Path, object]]) -> None:
    lock, _ = _lock(carriers, "constraints")
    docopt = _pkg(lock, "docopt")
    assert docopt["source"] == "sdist" and docopt["sdist"]["filename"] == "docopt-0.6.2.tar.gz"
    assert docopt["build-requires"][0]["name"] == "setuptools"


def test_constraints_file_constrains_the_resolution(carriers: dict[str, tuple[Path, object]]) -> None:
    lock, _ = _lock(carriers, "constraints")
    from packaging.version import Version

    assert lock["python"]["constraints"] == ["idna<3.10"]
    assert Version(_pkg(lock, "idna")["version"]) < Version("3.10")


def test_index_urls_are_used_but_credentials_never_recorded(carriers: dict[str, tuple[Path, object]],
                                                           tmp_path: Path) -> None:
    lock, text = _lock(carriers, "index")
    assert lock["python"]["index-url"] == "https://pypi.org/simple"
    assert lock["python"]["extra-index-urls"] == ["https://pypi.org/simple/"]
    assert "s3cr3t" not in text and "lockbuild:" not in text.replace("lockbuild.lock", "")
    d, _ = carriers["index"]
    r = finish(lockbuild_process("export", "pylock", "-o", str(tmp_path / "pylock.toml"), cwd=d))
    assert r.code == 0, r.stderr
    assert "s3cr3t" not in (tmp_path / "pylock.toml").read_text()


def test_bundled_wheel_is_locked_from_the_model_by_sha256(carriers: dict[str, tuple[Path, object]]) -> None:
    lock, _ = _lock(carriers, "bundled")
    d, _ = carriers["bundled"]
    six = _pkg(lock, "six")
    digest, size = sha256_file(d / "model" / "wheels" / "six-1.17.0-py2.py3-none-any.whl")
    assert (six["source"], six["path"], six["url"]) == ("model", "wheels/six-1.17.0-py2.py3-none-any.whl", "")
    assert ("sha256:" + six["sha256"], six["size"]) == (digest, size)
    assert any(f["path"] == six["path"] and "sha256:" + f["sha256"] == digest for f in lock["model"]["files"])
    acme = _pkg(lock, "acme-features")
    digest, size = sha256_file(d / "model" / "wheels" / acme["path"].rsplit("/", 1)[-1])
    assert (acme["source"], acme["version"], "sha256:" + acme["sha256"]) == ("model", "0.1", digest)


def test_conda_yaml_only_model_locks_from_the_pip_section(carriers: dict[str, tuple[Path, object]]) -> None:
    d, _ = carriers["conda-only"]
    info = read_model(d / "model")
    assert info.env_source == "conda.yaml" and "docopt==0.6.2" in info.requirements
    assert info.python_version == "3.11.7"
    lock, _ = _lock(carriers, "conda-only")
    assert _pkg(lock, "docopt")["source"] == "sdist"


def test_conda_pip_section_lines_get_the_same_checks(tmp_path: Path) -> None:
    d = project(tmp_path, "conda-bad")
    (d / "model" / "requirements.txt").unlink()
    conda = d / "model" / "conda.yaml"
    conda.write_text(conda.read_text().replace("  - docopt==0.6.2", "  - -e git+https://example.invalid/x.git"))
    with pytest.raises(RequirementsError) as e:
        read_model(d / "model")
    assert e.value.where == "conda.yaml (dependencies: pip: item):3"
    assert e.value.message.startswith("editable requirement `-e git+https://example.invalid/x.git`")


def test_python_override_note_names_the_spec_not_the_model(carriers: dict[str, tuple[Path, object]]) -> None:
    lock, _ = _lock(carriers, "python-override")
    _, r = carriers["python-override"]
    err = " ".join(r.stderr.split())  # type: ignore[attr-defined]
    assert 'the spec\'s [target] python = "3.11" (lockbuild.toml) overrides the Python the model logged ' \
           "(3.10.12)" in err, err
    assert lock["model"]["python-version"] == "3.10.12" and lock["target"]["python"].startswith("3.11.")


def test_unsupported_python_override_is_reported_as_the_specs_value(tmp_path: Path) -> None:
    d = project(tmp_path, "py312", SPEC + '\n[target]\npython = "3.12"\n')
    r = finish(lockbuild_process("lock", cwd=d, env={"LOCKBUILD_CACHE": str(tmp_path / "cache")}))
    err = " ".join(r.stderr.split())
    assert r.code == 7 and "Traceback" not in err, err
    assert 'the spec\'s [target] python = "3.12" (lockbuild.toml) is not one of Debian\'s own interpreters' in err
    assert "the model itself logged Python 3.11.7" in err and "model was logged with Python 3.12" not in err
    assert not (d / "lockbuild.lock").exists()


def test_hash_options_and_continuations_as_pip_writes_them(tmp_path: Path) -> None:
    """`pip-compile --generate-hashes` output (continuations, --hash options) reads as plain pins."""
    from lockbuild.model.metadata import parse_requirements

    (tmp_path / "requirements.txt").write_text(
        "docopt==0.6.2 \\\n    --hash=sha256:49b3a825280bd66b3aa83585ef59c4a8c82f2c8a522dbe754a8bc8d08c85c491\n"
        f"pandas==3.1.1 --hash=sha256:{'0' * 64}  # via mlflow\n-e ./pkg\n")
    with pytest.raises(RequirementsError) as e:
        parse_requirements(tmp_path / "requirements.txt")
    assert e.value.where == "requirements.txt:4"  # the line number of the file, continuations counted
    (tmp_path / "requirements.txt").write_text(
        "docopt==0.6.2 \\\n    --hash=sha256:49b3a825280bd66b3aa83585ef59c4a8c82f2c8a522dbe754a8bc8d08c85c491\n"
        "pandas==3.1.1\n")
    r = parse_requirements(tmp_path / "requirements.txt")
    assert r.requirements == ["docopt==0.6.2", "pandas==3.1.1"]
    # the pins are kept and enforced at lock time (tests/test_lock_inputs.py); a malformed one is refused
    assert r.hash_pins == {"docopt": ["sha256:49b3a825280bd66b3aa83585ef59c4a8c82f2c8a522dbe754a8bc8d08c85c491"]}
    (tmp_path / "requirements.txt").write_text("docopt==0.6.2 \\\n    --hash=sha256:49b3\npandas==3.1.1\n")
    with pytest.raises(RequirementsError, match="not a sha256 pin"):
        parse_requirements(tmp_path / "requirements.txt")


def test_pylock_export_pins_a_built_package_by_its_sdist(carriers: dict[str, tuple[Path, object]],
                                                         tmp_path: Path) -> None:
    d, _ = carriers["constraints"]
    r = finish(lockbuild_process("export", "pylock", "-o", str(tmp_path / "pylock.toml"), cwd=d))
    assert r.code == 0, r.stderr
    pylock = tomllib.loads((tmp_path / "pylock.toml").read_text())
    docopt = next(p for p in pylock["packages"] if p["name"] == "docopt")
    assert "wheels" not in docopt
    assert docopt["sdist"]["hashes"]["sha256"] == "49b3a825280bd66b3aa83585ef59c4a8c82f2c8a522dbe754a8bc8d08c85c491"
    assert all(w["url"].startswith("https://") for p in pylock["packages"] for w in p.get("wheels", []))
