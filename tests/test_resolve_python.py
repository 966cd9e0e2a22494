"""Python resolution: the serving runtime replaces the logged mlflow pin, and real uv against real
PyPI pins exactly one target wheel (with sha256) per distribution, or explains why it cannot."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from packaging.utils import parse_wheel_filename

from lockbuild.errors import ResolveError
from lockbuild.lockfile.model import Wheel
from lockbuild.resolve.python import (
    check_single_mlflow,
    model_requirements,
    resolve_python,
    runtime_requirements,
    serving_server,
)
from lockbuild.resolve.uv import PythonTarget, parse_pylock, pick_wheel, target_tags, wheel_filename
from tests.lockbuild_testing import shared_cache

AMD64 = PythonTarget(python="3.11.2", wheel_platform="x86_64-manylinux_2_36")
ARM64 = PythonTarget(python="3.11.2", wheel_platform="aarch64-manylinux_2_36")
KERAS3_LOGGED = ("mlflow==3.17.2", "cloudpickle==3.1.3", "tensorflow-cpu==2.21.0", "keras==3.15.1", "numpy==2.4.6")
PYPI = "https://pypi.org/simple"
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture()
def uv_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = shared_cache(tmp_path_factory)
    monkeypatch.setenv("LOCKBUILD_CACHE", str(cache))  # uv's cache is <cache>/uv
    return cache


def resolve(requirements: list[str], target: PythonTarget = AMD64, exclude_newer: str | None = None,
            constraints: list[str] | None = None) -> dict[str, Wheel]:
    wheels = resolve_python(requirements, constraints or [], target=target, index_url=PYPI,
                            exclude_newer=exclude_newer or now())
    by_name = {w.name: w for w in wheels}
    assert len(by_name) == len(wheels), "one wheel per distribution"
    return by_name


# -- requirements, offline -----------------------------------------------------------------------
def test_logged_mlflow_pin_becomes_the_serving_distribution() -> None:
    reqs = model_requirements(KERAS3_LOGGED, serving="mlflow-skinny", exclude=())
    assert reqs == ["cloudpickle==3.1.3", "tensorflow-cpu==2.21.0", "keras==3.15.1", "numpy==2.4.6"]
    assert runtime_requirements("mlflow-skinny", "3.17.2")[0] == "mlflow-skinny==3.17.2"
    assert runtime_requirements("mlflow", "3.17.2")[0] == "mlflow==3.17.2"
    assert not any(r.startswith(("mlflow==", "mlflow>")) for r in runtime_requirements("mlflow-skinny", "3.17.2"))


def test_every_mlflow_distribution_pin_is_dropped_and_exclude_drops_by_normalized_name() -> None:
    logged = ["MLflow_Skinny==3.17.2", "mlflow-tracing==3.17.2", "Tensorflow_CPU==2.21.0", "keras==3.15.1"]
    assert model_requirements(logged, serving="mlflow", exclude=("tensorflow-cpu",)) == ["keras==3.15.1"]


def test_invalid_logged_requirement_is_a_resolve_error() -> None:
    with pytest.raises(ResolveError) as e:
        model_requirements(["numpy=1.26"], serving="mlflow-skinny", exclude=())
    assert "numpy=1.26" in e.value.message and "[python] exclude" in (e.value.hint or "")


def test_mlflow_2_scoring_server_needs_starlette_below_1() -> None:
    assert "starlette<1" in runtime_requirements("mlflow-skinny", "2.22.5")
    assert "starlette<1" not in runtime_requirements("mlflow-skinny", "3.17.2")
    assert {"flask", "gunicorn"} <= set(runtime_requirements("mlflow-skinny", "2.9.2", flask=True))


def test_target_tags_accept_only_the_target_interpreter_and_machine() -> None:
    tags = {str(t) for t in target_tags(AMD64)}
    assert {"cp311-cp311-manylinux_2_36_x86_64", "cp311-cp311-manylinux_2_17_x86_64",
            "cp311-cp311-manylinux2014_x86_64", "cp39-abi3-manylinux_2_28_x86_64", "py3-none-any"} <= tags
    assert not {"cp311-cp311-manylinux_2_37_x86_64", "cp312-cp312-manylinux_2_17_x86_64",
                "cp311-cp311-manylinux_2_17_aarch64", "cp311-cp311-musllinux_1_2_x86_64"} & tags


def test_pick_wheel_prefers_the_most_specific_compatible_wheel() -> None:
    def w(name: str) -> dict:
        return {"url": f"https://files.example/{name}", "size": 1, "hashes": {"sha256": "0" * 64}}

    wheels = [w("x-1.0-py3-none-any.whl"), w("x-1.0-cp311-cp311-manylinux_2_17_x86_64.whl"),
              w("x-1.0-cp311-cp311-manylinux_2_17_aarch64.whl"), w("x-1.0-cp312-cp312-manylinux_2_17_x86_64.whl")]
    assert wheel_filename(pick_wheel(wheels, target_tags(AMD64)) or {}) == "x-1.0-cp311-cp311-manylinux_2_17_x86_64.whl"
    assert wheel_filename(pick_wheel(wheels[2:], target_tags(ARM64)) or {}) == (
        "x-1.0-cp311-cp311-manylinux_2_17_aarch64.whl")
    assert pick_wheel(wheels[3:], target_tags(AMD64)) is None


def test_package_with_only_an_sdist_or_foreign_wheels_is_a_resolve_error() -> None:
    sdist_only = '[[packages]]\nname = "pkg"\nversion = "1.0"\nsdist = { url = "https://x/pkg-1.0.tar.gz" }\n'
    with pytest.raises(ResolveError) as e:
        parse_pylock(sdist_only, target_tags(AMD64), AMD64.wheel_platform)
    assert "pkg 1.0 has no wheel (only an sdist)" in e.value.message
    foreign = ('[[packages]]\nname = "pkg"\nversion = "1.0"\nwheels = [{ url = '
               '"https://x/pkg-1.0-cp311-cp311-win_amd64.whl", size = 1, hashes = { sha256 = "' + "a" * 64 + '" } }]\n')
    with pytest.raises(ResolveError) as e:
        parse_pylock(foreign, target_tags(AMD64), AMD64.wheel_platform)
    assert "no wheel for x86_64-manylinux_2_36 (wheels exist for: win_amd64)" in e.value.message


def test_two_mlflow_distributions_at_different_versions_are_refused() -> None:
    def wheel(name: str, version: str) -> Wheel:
        return Wheel(name, version, f"{name}-{version}-py3-none-any.whl", "https://x", 1, "0" * 64)

    check_single_mlflow([wheel("mlflow", "3.17.2"), wheel("mlflow-skinny", "3.17.2")])
    with pytest.raises(ResolveError) as e:
        check_single_mlflow([wheel("mlflow", "3.17.2"), wheel("mlflow-skinny", "3.16.0")])
    assert "mlflow-skinny==3.16.0" in e.value.message and "site-packages/mlflow/" in e.value.message


# -- real uv, real PyPI --------------------------------------------------------------------------
@pytest.mark.network
def test_keras3_example_resolves_to_one_target_wheel_per_package(uv_cache: Path) -> None:
    reqs = model_requirements(KERAS3_LOGGED, serving="mlflow-skinny", exclude=()) + runtime_requirements(
        "mlflow-skinny", "3.17.2")
    wheels = resolve(reqs)
    assert wheels["tensorflow-cpu"].version == "2.21.0" and wheels["keras"].version == "3.15.1"
    assert wheels["numpy"].version == "2.4.6" and wheels["mlflow-skinny"].version == "3.17.2"
    assert "mlflow" not in wheels  # the skinny runtime only: both would write site-packages/mlflow/
    assert serving_server(list(wheels.values())) == "uvicorn"
    accepted = set(target_tags(AMD64))
    for name, w in wheels.items():
        dist, _, _, tags = parse_wheel_filename(w.filename)
        assert dist == name, w.filename
        assert tags & accepted, w.filename
        for t in tags:
            assert t.platform == "any" or re.fullmatch(r"manylinux(_2_\d+|2014|2010|1)_x86_64", t.platform), w
            assert t.interpreter in {"py3", "py2", "cp311"} or t.abi == "abi3", w.filename
        assert DIGEST.fullmatch(w.sha256), w
        assert w.size > 0 and w.url.startswith("https://files.pythonhosted.org/") and w.url.endswith(w.filename)
    assert "cp311" in wheels["tensorflow-cpu"].filename and "x86_64" in wheels["tensorflow-cpu"].filename


@pytest.mark.network
def test_serving_mlflow_pins_the_full_mlflow_at_the_logged_version(uv_cache: Path) -> None:
    reqs = model_requirements(["mlflow==3.17.2", "cloudpickle==3.1.3"], serving="mlflow", exclude=()) + (
        runtime_requirements("mlflow", "3.17.2"))
    assert reqs[:2] == ["cloudpickle==3.1.3", "mlflow==3.17.2"]
    wheels = resolve(reqs)
    assert wheels["mlflow"].version == "3.17.2"
    assert wheels["mlflow-skinny"].version == "3.17.2"  # the full mlflow depends on the same skinny


@pytest.mark.network
def test_requirement_without_a_wheel_for_the_platform_quotes_uv(uv_cache: Path) -> None:
    with pytest.raises(ResolveError) as e:
        resolve(["tensorflow-cpu==2.21.0"], target=ARM64)
    msg = e.value.message
    assert "aarch64-manylinux_2_36, Python 3.11.2" in msg
    assert "tensorflow-cpu==2.21.0 has no wheels with a matching platform tag" in msg  # uv's own words
    assert "manylinux_2_27_x86_64" in msg  # the platforms that do have wheels
    assert "[target] platform" in (e.value.hint or "") and e.value.exit_code == 6


@pytest.mark.network
@pytest.mark.parametrize(("requirements", "explanation"), [
    (["numpy==1.26.4", "numpy==2.0.0"], "you require numpy==1.26.4 and numpy==2.0.0"),
    (["pandas==2.2.0", "numpy==1.21.0"], "pandas==2.2.0 depends on numpy"),
])
def test_conflicting_pins_quote_uvs_explanation(uv_cache: Path, requirements: list[str], explanation: str) -> None:
    with pytest.raises(ResolveError) as e:
        resolve(requirements)
    assert "No solution found" in e.value.message and explanation in e.value.message
    assert "unsatisfiable" in e.value.message


@pytest.mark.network
def test_model_constraints_bound_the_resolution(uv_cache: Path) -> None:
    assert resolve(["pandas==2.2.3"], constraints=["numpy<2"])["numpy"].version.startswith("1.26.")
    with pytest.raises(ResolveError) as e:
        resolve(["numpy==2.0.0"], constraints=["numpy<2"])
    assert "numpy" in e.value.message


@pytest.mark.network
def test_exclude_newer_cutoff_makes_the_resolution_reproducible(uv_cache: Path) -> None:
    # numpy 1.26.3 was uploaded on 2024-01-02: a cutoff the day before pins 1.26.2, whatever PyPI has now.
    assert resolve(["numpy"], exclude_newer="2024-01-01T00:00:00Z")["numpy"].version == "1.26.2"
    with pytest.raises(ResolveError):
        resolve(["numpy==2.0.0"], exclude_newer="2024-01-01T00:00:00Z")
