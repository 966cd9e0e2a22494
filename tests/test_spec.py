"""lockbuild.toml: defaults, and errors that name the file, line, table and key (never a traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockbuild.errors import SpecError
from lockbuild.spec import DEFAULT_INDEX, load_spec, parse_spec, render_spec
from tests.lockbuild_testing import finish, lockbuild_process, run_cli


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "lockbuild.toml"
    p.write_text(text)
    return p


def spec_error(tmp_path: Path, text: str) -> SpecError:
    with pytest.raises(SpecError) as e:
        load_spec(write(tmp_path, text))
    return e.value


def test_minimal_spec_loads_with_the_documented_defaults(tmp_path: Path) -> None:
    project = tmp_path / "Churn Model"
    project.mkdir()
    s = load_spec(write(project, '[model]\nuri = "model"\n'))
    assert s.path == (project / "lockbuild.toml").resolve()
    assert s.model_uri == "model" and s.tracking_uri is None
    assert (s.platform, s.python, s.base) == ("linux/amd64", None, None)
    assert (s.serving, s.index_url, s.exclude_newer) == ("mlflow-skinny", DEFAULT_INDEX, None)
    assert (s.port, s.workers) == (8080, 1)
    assert s.requirements == () and s.exclude == () and s.debian_packages == ()
    assert s.mirror == "http://deb.debian.org/debian"
    assert s.image_name == "lockbuild/churn-model"  # from the project directory
    assert s.resolve_path("model") == (project / "model").resolve()


def test_spec_path_may_be_the_directory(tmp_path: Path) -> None:
    write(tmp_path, '[model]\nuri = "model"\n')
    assert load_spec(tmp_path).path == (tmp_path / "lockbuild.toml").resolve()


def test_registry_model_names_the_image_and_is_not_local(tmp_path: Path) -> None:
    s = load_spec(write(tmp_path, '[model]\nuri = "models:/Churn_Model@champion"\n'
                                  'tracking-uri = "http://127.0.0.1:5000"\n'))
    assert s.image_name == "lockbuild/churn-model"
    assert s.tracking_uri == "http://127.0.0.1:5000"


def test_missing_spec_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as e:
        load_spec(tmp_path / "lockbuild.toml")
    assert "no spec at" in e.value.message and "lockbuild init" in (e.value.hint or "")


def test_malformed_toml_names_line_and_column(tmp_path: Path) -> None:
    e = spec_error(tmp_path, '[model]\nuri = "model"\n[image]\nport = = 8080\n')
    assert e.message.startswith("malformed TOML")
    assert e.where is not None and e.where.startswith(str(tmp_path / "lockbuild.toml") + ":4:")
    assert int(e.where.rsplit(":", 1)[1]) > 0
    assert e.exit_code == 3


def test_malformed_toml_exits_3_with_the_location_and_no_traceback(tmp_path: Path) -> None:
    write(tmp_path, '[model]\nuri = "model\n')
    r = finish(lockbuild_process("lock", cwd=tmp_path), timeout=120)
    assert r.code == 3, r.stderr
    assert "Traceback" not in r.stderr
    assert "spec: malformed TOML" in r.stderr and "lockbuild.toml:2:" in r.stderr
    assert not (tmp_path / "lockbuild.lock").exists()


def test_unknown_key_names_the_key_the_table_and_the_line(tmp_path: Path) -> None:
    e = spec_error(tmp_path, '[model]\nuri = "model"\n\n[image]\nport = 8080\nprot = 8081\n')
    assert "unknown key 'prot' in [image]" in e.message
    assert e.where == f"{tmp_path / 'lockbuild.toml'}:6"
    assert "port" in (e.hint or "") and "workers" in (e.hint or "")  # the allowed keys


def test_unknown_key_after_a_commented_table_header_still_has_its_line(tmp_path: Path) -> None:
    e = spec_error(tmp_path, '[model]\nuri = "model"\n[ python ]  # extras\nexclude-newr = "2026-01-01"\n')
    assert "unknown key 'exclude-newr' in [python]" in e.message
    assert e.where == f"{tmp_path / 'lockbuild.toml'}:4"


def test_unknown_table_is_named_with_its_line(tmp_path: Path) -> None:
    e = spec_error(tmp_path, '[model]\nuri = "model"\n\n[modle]\nuri = "x"\n')
    assert "unknown key 'modle' in top level" in e.message
    assert e.where == f"{tmp_path / 'lockbuild.toml'}:4"
    assert "model" in (e.hint or "") and "target" in (e.hint or "")


def test_unknown_key_exits_3_via_the_cli(tmp_path: Path) -> None:
    write(tmp_path, '[model]\nuri = "model"\nurl = "x"\n')
    r = run_cli("lock", "--spec", str(tmp_path))
    assert r.code == 3
    assert "spec: unknown key 'url' in [model]" in r.text and "lockbuild.toml:3" in r.text
    assert "hint: allowed keys there: tracking-uri, uri" in r.text


def test_port_zero_is_rejected_with_the_key_and_line(tmp_path: Path) -> None:
    e = spec_error(tmp_path, '[model]\nuri = "model"\n[image]\nport = 0\n')
    assert e.message == "[image] port: 0 is less than the minimum of 1"
    assert e.where == f"{tmp_path / 'lockbuild.toml'}:4"


def test_platform_windows_is_rejected_listing_the_supported_platforms(tmp_path: Path) -> None:
    e = spec_error(tmp_path, '[model]\nuri = "model"\n[target]\nplatform = "windows"\n')
    assert "[target] platform" in e.message and "'windows'" in e.message
    assert "linux/amd64" in e.message and "linux/arm64" in e.message
    assert e.where == f"{tmp_path / 'lockbuild.toml'}:4"


@pytest.mark.parametrize(("table", "line", "expected"), [
    ("[image]", 'port = "8080"', "[image] port: '8080' is not of type 'integer'"),
    ("[image]", "workers = 65", "[image] workers: 65 is greater than the maximum of 64"),
    ("[python]", 'serving = "mlflow-full"', "[python] serving: 'mlflow-full' is not one of"),
    ("[target]", 'python = "3.11.7"', "[target] python: '3.11.7' does not match"),
    ("[target]", 'base = "ubuntu:jammy"', "[target] base: 'ubuntu:jammy' does not match"),
    ("[image]", 'name = "My Image"', "[image] name: 'My Image' does not match"),
    ("[python]", 'exclude-newer = "yesterday"', "[python] exclude-newer: 'yesterday' does not match"),
])
def test_bad_value_names_table_key_and_value(tmp_path: Path, table: str, line: str, expected: str) -> None:
    e = spec_error(tmp_path, f'[model]\nuri = "model"\n{table}\n{line}\n')
    assert e.message.startswith(expected), e.message
    assert e.where == f"{tmp_path / 'lockbuild.toml'}:4"


def test_bad_value_inside_a_sub_table_names_its_line(tmp_path: Path) -> None:
    e = spec_error(tmp_path, '[model]\nuri = "model"\n[image.env]\nA = "1"\nB = 2\n')
    assert "is not of type 'string'" in e.message and "image.env.B" in (e.hint or "")
    assert e.where == f"{tmp_path / 'lockbuild.toml'}:5"


def test_missing_model_uri_is_reported(tmp_path: Path) -> None:
    e = spec_error(tmp_path, '[model]\ntracking-uri = "http://x"\n')
    assert "[model]" in e.message and "'uri' is a required property" in e.message
    e = spec_error(tmp_path, '[image]\nport = 8080\n')
    assert "'model' is a required property" in e.message


@pytest.mark.parametrize(("given", "locked"), [
    ("2026-01-31", "2026-01-31T00:00:00Z"),
    ("2026-01-31T12:30:00Z", "2026-01-31T12:30:00Z"),
    ("2026-01-31T12:30:00+02:00", "2026-01-31T10:30:00Z"),
    ("2026-01-01T01:00:00+05:00", "2025-12-31T20:00:00Z"),
    ("2026-01-31T12:30:00.123456Z", "2026-01-31T12:30:00Z"),
])
def test_exclude_newer_is_normalised_to_utc_seconds(tmp_path: Path, given: str, locked: str) -> None:
    s = load_spec(write(tmp_path, f'[model]\nuri = "model"\n[python]\nexclude-newer = "{given}"\n'))
    assert s.exclude_newer == locked


def test_exclude_newer_that_is_not_a_calendar_date_is_a_spec_error(tmp_path: Path) -> None:
    e = spec_error(tmp_path, '[model]\nuri = "model"\n[python]\nexclude-newer = "2026-13-45"\n')
    assert "[python] exclude-newer: '2026-13-45' is not a valid date" in e.message
    assert e.where == f"{tmp_path / 'lockbuild.toml'}:4"
    r = run_cli("lock", "--spec", str(tmp_path))
    assert r.code == 3 and "Traceback" not in r.stderr


def test_spec_that_is_not_utf8_is_a_spec_error(tmp_path: Path) -> None:
    (tmp_path / "lockbuild.toml").write_bytes(b'[model]\nuri = "mod\xe9l"\n')
    with pytest.raises(SpecError) as e:
        load_spec(tmp_path)
    assert "not UTF-8" in e.value.message


def test_what_init_renders_loads_back(tmp_path: Path) -> None:
    text = render_spec("models:/churn@champion", tracking_uri="http://127.0.0.1:5000", python="3.11",
                       name="acme/churn")
    s = parse_spec(text, tmp_path / "lockbuild.toml")
    assert (s.model_uri, s.tracking_uri, s.python, s.image_name) == (
        "models:/churn@champion", "http://127.0.0.1:5000", "3.11", "acme/churn")
    assert (s.port, s.workers, s.serving) == (8080, 1, "mlflow-skinny")
