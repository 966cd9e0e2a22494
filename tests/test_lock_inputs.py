"""What `lock` reads from a model and a spec, judged as hostile input (issue 21, items 3, 4, 6, 7, 8).

Real files, built here the way a broken export or an attacker would write them: non-UTF-8 bytes,
YAML of the wrong shape, aliases and duplicate keys, env paths out of the model, symlink loops,
pipes, duplicate spec keys, URL credentials. Each is a one-line error naming the file and key, never
a traceback; credentials are removed by a recorded rewrite (model files) or refused (the spec).
Also: the lock's TOML writer writes the bytes tomlkit did, in linear time."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from lockbuild.errors import ModelError, RequirementsError, SpecError
from lockbuild.fsutil import sha256_bytes
from lockbuild.lock.create import check_hash_pins, check_yanked
from lockbuild.lockfile.io import dumps, loads, read_lock, to_dict, validate
from lockbuild.lockfile.model import BuildRules, Lock, Sdist, VariantChoice, Wheel
from lockbuild.model.metadata import parse_requirements, read_model
from lockbuild.resolve.uv import UvReport
from lockbuild.spec import load_spec
from lockbuild.verify.doctor import doctor
from tests.lockbuild_testing import EXAMPLES, KERAS3_MODEL, run_cli

TOKEN = "s3cr3tTOKEN-4f9a"


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return Path(shutil.copytree(KERAS3_MODEL, tmp_path / "model"))


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new))


def refused(model: Path, *words: str) -> ModelError:
    with pytest.raises(ModelError) as e:
        read_model(model)
    text = f"{e.value.message} {e.value.where} {e.value.hint}"
    for w in words:
        assert w in text, text
    return e.value


# -- item 7: hostile model files --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt"])
def test_non_utf8_bytes_name_the_file_and_offset(model: Path, name: str) -> None:
    p = model / name
    p.write_bytes(p.read_bytes() + b"\n# caf\xe9\n")
    e = refused(model, name, "not UTF-8", "0xe9")
    assert e.hint


@pytest.mark.parametrize(("name", "text", "words"), [
    ("MLmodel", "- just\n- a list\n", ("MLmodel has no flavors",)),
    ("MLmodel", "flavors: [python_function]\n", ("flavors", "must be a mapping", "list")),
    ("MLmodel", "flavors:\n  python_function: yes-please\n", ("flavors.python_function", "must be a mapping")),
    ("MLmodel", "flavors:\n  python_function:\n    loader_module: [a]\n", ("loader_module", "module name")),
    ("conda.yaml", "dependencies: numpy\n", ("conda.yaml", "dependencies", "must be a list")),
    ("conda.yaml", "dependencies:\n- pip: {numpy: 1}\n", ("dependencies[0].pip", "list of strings")),
    ("conda.yaml", "dependencies:\n- pip: [[nested]]\n", ("dependencies[0].pip[0]", "must be a string")),
    ("python_env.yaml", "- 3.11\n", ("python_env.yaml", "must be a mapping")),
    ("python_env.yaml", "python: {major: 3}\n", ("python_env.yaml", "`python`")),
])
def test_yaml_of_the_wrong_shape_names_file_and_key(model: Path, name: str, text: str, words: tuple[str]) -> None:
    (model / name).write_text(text)
    refused(model, *words)


@pytest.mark.parametrize(("line", "words"), [
    ("mlflow_version: not-a-version", ("mlflow_version: not-a-version", "is not a version")),
    ("mlflow_version: [3]", ("mlflow_version", "must be a version", "list")),
])
def test_mlflow_version_that_is_not_a_version(model: Path, line: str, words: tuple[str]) -> None:
    edit(model / "MLmodel", "mlflow_version: 3.17.2", line)
    refused(model, *words)


def test_env_virtualenv_that_is_a_number(model: Path) -> None:
    edit(model / "MLmodel", "virtualenv: python_env.yaml", "virtualenv: 123")
    refused(model, "flavors.python_function.env.virtualenv", "must be a path", "int")


def test_yaml_alias_bomb_is_refused_in_bounded_memory(model: Path) -> None:
    import resource

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    lines += ["dependencies:", "- pip: *a9"]
    (model / "conda.yaml").write_text("\n".join(lines) + "\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused(model, "conda.yaml", "aliases", "conda.yaml:2")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: nothing expanded


def test_duplicate_yaml_key_is_refused(model: Path) -> None:
    (model / "python_env.yaml").write_text("python: 3.11.7\npython: 3.12.1\n")
    refused(model, "python_env.yaml", "duplicate key 'python'", ":2")


def test_malformed_yaml_names_the_line(model: Path) -> None:
    (model / "conda.yaml").write_text("dependencies:\n- pip:\n  - numpy\n  - [unclosed\n")
    refused(model, "cannot parse conda.yaml", "conda.yaml:")


def test_symlink_loop_in_the_model(model: Path) -> None:
    os.symlink("loop-b", model / "loop-a")
    os.symlink("loop-a", model / "loop-b")
    refused(model, "loop-a", "cannot be resolved", "symlink loop")


def test_named_pipe_in_the_model_is_refused_not_read(model: Path) -> None:
    os.mkfifo(model / "data" / "pipe")
    refused(model, "data/pipe", "not a regular file")


def test_requirements_include_through_a_symlink_loop(model: Path) -> None:
    os.symlink("x.txt", model / "x.txt")
    (model / "requirements.txt").write_text("-r x.txt\nnumpy\n")
    refused(model, "x.txt", "cannot be resolved")


# -- item 3: the model directory is the boundary ----------------------------------------------------
@pytest.mark.parametrize("key", ["virtualenv", "conda"])
def test_env_file_outside_the_model_is_refused_with_file_and_key(model: Path, tmp_path: Path, key: str) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_text("python: 3.9.0\ndependencies:\n- python=3.9.0\n- pip:\n  - evil==1\n")
    value = {"virtualenv": "python_env.yaml", "conda": "conda.yaml"}[key]
    edit(model / "MLmodel", f"{key}: {value}", f"{key}: ../outside.yaml")
    refused(model, f"flavors.python_function.env.{key}", "outside the model directory", "MLmodel")
    edit(model / "MLmodel", f"{key}: ../outside.yaml", f"{key}: {outside}")
    refused(model, "outside the model directory")


def test_env_file_through_a_symlink_out_of_the_model(model: Path, tmp_path: Path) -> None:
    (tmp_path / "outside.yaml").write_text("python: 3.9.0\n")
    os.symlink(tmp_path / "outside.yaml", model / "env.yaml")
    edit(model / "MLmodel", "virtualenv: python_env.yaml", "virtualenv: env.yaml")
    refused(model, "env.yaml", "outside the model directory")


def test_every_file_lock_reads_is_hashed(model: Path) -> None:
    """The env files the MLmodel names, wherever in the model they are, are model files in the lock:
    editing one changes the tree digest (so `lock --check` reports it)."""
    (model / "envs").mkdir()
    shutil.move(model / "python_env.yaml", model / "envs" / "py.yaml")
    edit(model / "MLmodel", "virtualenv: python_env.yaml", "virtualenv: envs/py.yaml")
    info = read_model(model)
    assert "envs/py.yaml" in {p for p, _, _ in info.files} and info.python_version == "3.11.7"
    edit(model / "envs" / "py.yaml", "3.11.7", "3.11.9")
    assert read_model(model).tree_digest != info.tree_digest


def test_env_file_the_mlmodel_names_but_the_model_lacks_is_as_if_not_named(model: Path) -> None:
    (model / "python_env.yaml").unlink()
    assert read_model(model).python_version == "3.11.7"  # from conda.yaml, inside the model


# -- item 4: no secret reaches a release --------------------------------------------------------------
CRED_LINE = f"--extra-index-url https://alice:{TOKEN}@pkgs.example.invalid/simple"


def test_model_credentials_are_removed_by_a_recorded_rewrite(model: Path) -> None:
    req = model / "requirements.txt"
    req.write_text(CRED_LINE + "\n" + req.read_text())
    (model / "constraints.txt").write_text(f"# mirror https://{TOKEN}@pkgs.example.invalid/x\nnumpy<3\n")
    edit(model / "conda.yaml", "- pip:", f"- pip:\n  - --index-url https://bob:{TOKEN}@pkgs.example.invalid/simple")
    info = read_model(model)
    assert [p for p, _ in info.rewrites] == ["conda.yaml", "constraints.txt", "requirements.txt"]
    rewritten = dict(info.rewritten)
    for path, data in rewritten.items():
        assert TOKEN.encode() not in data and b"alice" not in data and b"bob" not in data
        assert (path, len(data), sha256_bytes(data)) in info.files  # the lock pins the rewritten bytes
    assert rewritten["requirements.txt"].startswith(b"--extra-index-url https://pkgs.example.invalid/simple\n")
    assert info.extra_index_urls == ("https://pkgs.example.invalid/simple",)
    assert TOKEN not in repr(info.requirements) + repr(info.constraints) + repr(info.rewrites) + repr(info.notes)
    # rotating the token does not change what is locked
    edit(req, TOKEN, "other-token")
    assert read_model(model).tree_digest == info.tree_digest


def test_credentials_in_a_requirement_url_never_reach_the_message(model: Path) -> None:
    (model / "requirements.txt").write_text(f"acme @ https://alice:{TOKEN}@pkgs.example.invalid/acme-1.0.whl\n")
    with pytest.raises(RequirementsError) as e:
        read_model(model)
    assert TOKEN not in str(e.value.message) + str(e.value.hint) and "VCS/URL" in e.value.message


@pytest.mark.parametrize(("table", "line"), [
    ("python", f'requirements = ["{CRED_LINE}"]'),
    ("python", f'index-url = "https://alice:{TOKEN}@pkgs.example.invalid/simple"'),
    ("target", f'mirror = "http://u:{TOKEN}@deb.example.invalid/debian"'),
])
def test_spec_credentials_are_refused_naming_key_and_line(tmp_path: Path, table: str, line: str) -> None:
    spec = tmp_path / "lockbuild.toml"
    spec.write_text(f'[model]\nuri = "./model"\n\n[{table}]\n{line}\n')
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    text = f"{e.value.message} {e.value.where} {e.value.hint}"
    assert TOKEN not in text and "***@" in text and f"{spec}:5" in text and "netrc" in text
    r = run_cli("lock", "--spec", str(spec), "--json")
    assert r.code == SpecError.exit_code and TOKEN not in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_the_lock_schema_refuses_a_url_with_credentials() -> None:
    lk = read_lock(EXAMPLES / "keras3" / "lockbuild.lock")
    data = to_dict(dataclasses.replace(lk, python=dataclasses.replace(lk.python, requirements=(CRED_LINE,))))
    with pytest.raises(Exception, match="python.requirements"):
        validate(data, "x")


# -- item 7: the spec ---------------------------------------------------------------------------------
def test_duplicate_key_in_the_spec_names_line_and_column(tmp_path: Path) -> None:
    spec = tmp_path / "lockbuild.toml"
    spec.write_text('[model]\nuri = "./model"\nuri = "./other"\n')
    r = run_cli("lock", "--spec", str(spec), "--json")
    assert r.code == SpecError.exit_code and "Traceback" not in r.stderr
    assert r.json["where"].startswith(f"{spec}:3:") and "already exists" in r.json["message"]


def test_hostile_model_through_the_cli_is_one_json_error(model: Path) -> None:
    (model / "MLmodel").write_bytes(b"flavors:\n  python_function:\n    env: \xff\xfe\n")
    (model.parent / "lockbuild.toml").write_text('[model]\nuri = "./model"\n')
    r = run_cli("lock", "--spec", str(model.parent / "lockbuild.toml"), "--json")
    assert r.code == ModelError.exit_code and "Traceback" not in r.stderr
    assert r.json["error"] == "model" and "not UTF-8" in r.json["message"]


# -- item 6: requirement semantics --------------------------------------------------------------------
def test_unapplied_pip_options_are_named_in_notes(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("--pre\n-f https://example.invalid/links\n--no-binary :all:\n--prefer-binary\n"
                   "--trusted-host example.invalid\n--find-links=./wheels\nnumpy\n")
    r = parse_requirements(req)
    assert r.requirements == ["numpy"]
    assert [n.split(":", 2)[1] for n in r.notes] == ["1", "2", "3", "6"]
    assert "`--pre`" in r.notes[0] and "`-f https://example.invalid/links`" in r.notes[1]
    assert "--no-binary" in r.notes[2] and "not applied" in r.notes[2]


H1, H2 = "a" * 64, "b" * 64


def test_hash_pins_are_read_per_requirement(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text(f"NumPy==2.4.6 \\\n    --hash=sha256:{H1} \\\n    --hash=sha256:{H2.upper()}\npandas\n")
    r = parse_requirements(req)
    assert r.requirements == ["NumPy==2.4.6", "pandas"]
    assert r.hash_pins == {"numpy": [f"sha256:{H1}", f"sha256:{H2}"]}
    req.write_text("numpy --hash=md5:0123\n")
    with pytest.raises(RequirementsError, match="not a sha256 pin"):
        parse_requirements(req)


def _wheel(name: str, sha: str, **kw: Any) -> Wheel:
    return Wheel(name, "1.0", f"{name}-1.0-py3-none-any.whl", "https://example.invalid", 1, f"sha256:{sha}", **kw)


def test_a_wrong_hash_pin_refuses_naming_the_requirement(model: Path) -> None:
    req = model / "requirements.txt"
    req.write_text(req.read_text() + f"\nacme==1.0 --hash=sha256:{H1}\n")
    info = read_model(model)
    notes: list[str] = []
    check_hash_pins([_wheel("acme", H1)], info, notes)  # the pinned file: fine
    with pytest.raises(RequirementsError) as e:
        check_hash_pins([_wheel("acme", H2)], info, notes)
    assert "acme" in e.value.message and H1 in e.value.message and H2 in e.value.message
    sdist = Sdist("acme-1.0.tar.gz", "https://example.invalid", 1, f"sha256:{H1}")
    check_hash_pins([_wheel("acme", H2, source="sdist", sdist=sdist)], info, notes)  # pins the sdist it builds
    check_hash_pins([], info, notes)
    assert notes and "acme" in notes[0] and "do not apply" in notes[0]


def test_yanked_release_is_refused_unless_the_spec_allows_it(tmp_path: Path) -> None:
    report = UvReport(warnings=['warning: `requests==2.32.0` is yanked (reason: "Yanked due to conflicts '
                                'with CVE-2024-35195 mitigation")'])
    spec_file = tmp_path / "lockbuild.toml"
    spec_file.write_text('[model]\nuri = "./model"\n')
    wheels = [dataclasses.replace(_wheel("requests", H1), version="2.32.0")]
    with pytest.raises(Exception) as e:
        check_yanked(wheels, report, load_spec(spec_file))
    assert "requests 2.32.0 is yanked" in str(e.value) and "CVE-2024-35195" in str(e.value)
    assert "allow-yanked" in (e.value.hint or "")  # type: ignore[attr-defined]
    spec_file.write_text('[model]\nuri = "./model"\n\n[python]\nallow-yanked = ["Requests"]\n')
    (kept,) = check_yanked(wheels, report, load_spec(spec_file))
    assert kept.yanked.startswith("Yanked due to conflicts")
    lk = read_lock(EXAMPLES / "keras3" / "lockbuild.lock")
    bent = dataclasses.replace(lk, python=dataclasses.replace(lk.python, packages=lk.python.packages + (kept,)))
    (f,) = [f for f in doctor(bent) if f.rule == "yanked"]
    assert "CVE-2024-35195" in f.message and f.severity == "warning"
    again = {w.name: w for w in loads(dumps(bent)).python.packages}
    assert again["requests"].yanked == kept.yanked


# -- doctor: loader_module -----------------------------------------------------------------------------
@pytest.mark.parametrize(("loader", "files", "error"), [
    ("os", (), "standard-library module"),
    ("mlflow.sklearn", (), "belongs to no flavor"),
    ("my loader", (), "not a module name"),
    ("acme_loader", (), "neither MLflow's nor in the model's code/"),
    ("acme_loader", ("code/acme_loader.py",), None),
    ("mlflow.tensorflow", (), None),
    ("mlflow.pyfunc.model", (), None),
])
def test_loader_module_is_checked_against_flavors_code_and_lock(loader: str, files: tuple[str, ...],
                                                                error: str | None, tmp_path: Path) -> None:
    from lockbuild.fetch.cache import Cache
    from lockbuild.lockfile.model import ModelFile

    lk = read_lock(EXAMPLES / "keras3" / "lockbuild.lock")
    model = dataclasses.replace(lk.model, loader_module=loader,
                                files=lk.model.files + tuple(ModelFile(f, 1, "sha256:" + H1) for f in files))
    empty = Cache(tmp_path / "cache")  # wheels "downloaded": an empty cache says nothing about them
    found = [f for f in doctor(dataclasses.replace(lk, model=model), None) if f.rule == "loader-module"]
    if error is None:
        assert not found
    elif error.startswith("neither"):
        assert not found  # cannot tell without the wheels
        assert not [f for f in doctor(dataclasses.replace(lk, model=model), empty) if f.rule == "loader-module"]
    else:
        assert found and error in found[0].message and found[0].severity == "error"


# -- item 8: the TOML writer -----------------------------------------------------------------------------
def _tomlkit_dumps(lock: Lock) -> str:
    """The writer this project used before (tomlkit, quadratic in array length): the reference bytes."""
    from lockbuild.lockfile.io import CONTENT_PREFIX, HEADER, content_digest

    def table(values: dict[str, Any], t: Any = None) -> Any:
        t = tomlkit.table() if t is None else t
        t.update(values)
        return t

    def inline_rows(rows: list[dict[str, Any]]) -> Any:
        arr = tomlkit.array()
        for row in rows:
            arr.append(table(row, tomlkit.inline_table()))
        arr.multiline(True)
        return arr

    def aot(rows: list[dict[str, Any]]) -> Any:
        a = tomlkit.aot()
        for row in rows:
            a.append(table(row))
        return a

    data = to_dict(lock)
    doc = tomlkit.document()
    for key in ("version", "tool", "created", "inputs-digest"):
        doc.add(key, data[key])
    for section in ("inputs", "image", "target", "runtime"):
        doc.add(tomlkit.nl())
        doc.add(section, data[section])
    m, p, d = data["model"], data["python"], data["debian"]
    tables = {"model": {**m, "files": inline_rows(m["files"])},
              "python": {**p, "packages": aot(p["packages"])},
              "build": data["build"] if lock.build != BuildRules() else None,
              "debian": {"roots": d["roots"], "suites": aot(d["suites"]), "packages": aot(d["packages"])}}
    for section, values in tables.items():
        if values is not None:
            doc.add(tomlkit.nl())
            doc.add(section, table(values))
    body = tomlkit.dumps(doc)
    return f"# {HEADER}\n# {CONTENT_PREFIX}{content_digest(body)}\n{body}"


ODD = ['quote " back \\ tab \t nl \n cr \r ff \f bs \b', "esc \x1b del \x7f nul \x00 unit \x1f", "café ☃ 𝄞",
       "'single' [brackets] {braces} # hash = eq"]


def _odd_locks() -> list[Lock]:
    out = []
    for ex in ("keras3", "legacy-tfkeras", "pyfunc-sdist"):
        lk = read_lock(EXAMPLES / ex / "lockbuild.lock")
        out.append(lk)
        w = lk.python.packages[0]
        odd = dataclasses.replace(
            lk, labels=tuple(sorted((("org.opencontainers.image.source", ODD[0]), ('we"ird key', ODD[1]),
                                     ("", ODD[2])))),
            runtime=dataclasses.replace(lk.runtime, env=(("A_B", ODD[3]), ("x.y", "1"))),
            model=dataclasses.replace(lk.model, requirements=tuple(ODD), rewritten=(("requirements.txt", ODD[3]),),
                                      files=()),
            python=dataclasses.replace(lk.python, constraints=("numpy<3",), extra_index_urls=("https://h/simple",),
                                       variants=(VariantChoice("tensorflow", "tensorflow-cpu", ODD[0], 3, "x"),),
                                       cutoff_exempt=("acme",),
                                       packages=(dataclasses.replace(w, yanked=ODD[2], pruned=("a/", "b.py")),
                                                 *lk.python.packages[1:])),
            build=BuildRules())
        out.append(odd)
    return out


def test_the_writer_writes_the_bytes_tomlkit_wrote() -> None:
    for lk in _odd_locks():
        assert dumps(lk) == _tomlkit_dumps(lk)
        assert loads(dumps(lk)) == lk
    for ex in ("keras3", "legacy-tfkeras", "pyfunc-sdist"):  # the committed locks are unchanged
        path = EXAMPLES / ex / "lockbuild.lock"
        assert dumps(read_lock(path)) == path.read_text()


def test_the_writer_is_linear() -> None:
    """50,000 requirement lines (twice: model and python) in one lock: written and read back. The
    figure itself is a benchmark row (benchmarks/); here only that it is not minutes (tomlkit: 205 s)."""
    import time

    lk = read_lock(EXAMPLES / "keras3" / "lockbuild.lock")
    reqs = tuple(f"pkg-{i}==1.{i}" for i in range(50_000))
    big = dataclasses.replace(lk, model=dataclasses.replace(lk.model, requirements=reqs),
                              python=dataclasses.replace(lk.python, requirements=reqs))
    t = time.monotonic()
    text = dumps(big)
    assert time.monotonic() - t < 30
    assert re.search(r'"pkg-49999==1.49999"\]', text) and loads(text).python.requirements == reqs


def test_doctor_refuses_a_lock_whose_loader_is_os(tmp_path: Path) -> None:
    """`loader_module: os` used to build, verify and then die in smoke: doctor (and so `lock`, which
    fails on a doctor error) now names it."""
    lk = read_lock(EXAMPLES / "keras3" / "lockbuild.lock")
    bent = dataclasses.replace(lk, model=dataclasses.replace(lk.model, loader_module="os"))
    (tmp_path / "lockbuild.lock").write_text(dumps(bent))
    r = run_cli("doctor", "--lock", str(tmp_path / "lockbuild.lock"), "--json")
    assert r.code != 0 and "Traceback" not in r.stderr, r.stderr
    assert "loader_module os is a standard-library module" in r.stdout + r.stderr


def test_a_rewritten_model_file_refills_an_empty_cache_without_the_secret(model: Path, tmp_path: Path) -> None:
    """A build on a machine whose cache lacks the model files fetches them from the model again: the
    rewritten file is scrubbed the same way and checked against the lock's sha256; the secret never
    enters the cache."""
    from lockbuild.fetch.cache import Cache
    from lockbuild.fetch.model import fetch_model_files
    from lockbuild.lockfile.model import ModelFile, ModelLock

    req = model / "requirements.txt"
    req.write_text(CRED_LINE + "\n" + req.read_text())
    info = read_model(model)
    locked = ModelLock(uri="./model", resolved_uri="./model", files=tuple(ModelFile(*f) for f in info.files),
                       rewritten=info.rewrites)
    cache = Cache(tmp_path / "fresh-cache")
    paths = fetch_model_files(locked, cache, lock_dir=model.parent)
    (row,) = [f for f in locked.files if f.path == "requirements.txt"]
    assert paths[row.sha256].read_bytes() == dict(info.rewritten)["requirements.txt"]
    for p in (tmp_path / "fresh-cache").rglob("*"):
        assert not p.is_file() or TOKEN.encode() not in p.read_bytes()
