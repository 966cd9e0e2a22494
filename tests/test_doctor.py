"""doctor: each rule fires on a real lock bent the way real deployments break, and only then."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lockbuild.lockfile.io import read_lock
from lockbuild.lockfile.model import Lock, Wheel
from lockbuild.verify.doctor import RULES, doctor

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def keras3() -> Lock:
    return read_lock(EXAMPLES / "keras3" / "lockbuild.lock")


@pytest.fixture(scope="module")
def legacy() -> Lock:
    return read_lock(EXAMPLES / "legacy-tfkeras" / "lockbuild.lock")


def with_packages(lock: Lock, *, drop: tuple[str, ...] = (), add: tuple[tuple[str, str], ...] = (),
                  env: dict[str, str] | None = None) -> Lock:
    pkgs = [w for w in lock.python.packages if w.name not in drop]
    pkgs += [Wheel(name=n, version=v, filename=f"{n}-{v}-py3-none-any.whl", url="https://example.invalid/x.whl",
                   size=1, sha256="sha256:" + "0" * 64) for n, v in add]
    runtime = lock.runtime if env is None else dataclasses.replace(lock.runtime, env=tuple(sorted(env.items())))
    return dataclasses.replace(lock, python=dataclasses.replace(lock.python, packages=tuple(pkgs)), runtime=runtime)


def rules(findings: list) -> list[str]:
    return sorted({f.rule for f in findings})


def test_the_committed_examples_are_clean(keras3: Lock, legacy: Lock) -> None:
    assert doctor(keras3) == []
    assert doctor(legacy) == []


def test_python_minor_differs_from_the_logged_one(keras3: Lock) -> None:
    bent = dataclasses.replace(keras3, target=dataclasses.replace(keras3.target, python="3.13.5"))
    (f,) = doctor(bent)
    assert f.rule == "python-minor" and "3.11.7" in f.message and "3.13.5" in f.message and "[target] python" in f.fix
    assert f.severity == "error"  # a silent mismatch blocks `lock`


def test_python_minor_chosen_by_the_spec_is_a_warning(keras3: Lock) -> None:
    target = dataclasses.replace(keras3.target, python="3.13.5", python_requested="3.13")
    (f,) = doctor(dataclasses.replace(keras3, target=target))
    assert f.rule == "python-minor" and f.severity == "warning"  # deliberate: said, but the lock is written


def test_locked_mlflow_differs_from_the_model(keras3: Lock) -> None:
    bent = with_packages(keras3, drop=("mlflow-skinny",), add=(("mlflow-skinny", "3.10.0"),))
    assert "mlflow-version" in rules(doctor(bent))


def test_loader_module_missing_from_the_locked_mlflow(keras3: Lock, tmp_path: Path) -> None:
    import zipfile

    from lockbuild.fetch.cache import Cache

    cache = Cache(tmp_path / "cache")
    fake = tmp_path / "mlflow_skinny-3.17.2-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("mlflow/__init__.py", "")  # no mlflow/tensorflow
    sha = cache.put_file(fake)
    bent = with_packages(keras3, drop=("mlflow-skinny",))
    wheel = Wheel("mlflow-skinny", "3.17.2", fake.name, "https://example.invalid", fake.stat().st_size, sha)
    bent = dataclasses.replace(bent, python=dataclasses.replace(bent.python,
                                                                packages=bent.python.packages + (wheel,)))
    findings = doctor(bent, cache)
    assert [f.rule for f in findings] == ["loader-module"]
    assert "mlflow.tensorflow" in findings[0].message


def test_keras3_would_load_a_keras2_savedmodel(legacy: Lock) -> None:
    bent = with_packages(legacy, drop=("keras", "tensorflow-cpu"),
                         add=(("keras", "3.15.1"), ("tensorflow-cpu", "2.21.0")))
    found = [f for f in doctor(bent) if f.rule == "keras-major"]
    assert found and "Keras 2 (a SavedModel directory)" in found[0].message and "Keras 3" in found[0].message


def test_tf_keras_without_the_legacy_flag(legacy: Lock) -> None:
    bent = with_packages(legacy, add=(("tf-keras", "2.21.0"),), env={"HOME": "/home/nonroot"})
    assert "tf-keras-env" in rules(doctor(bent))
    ok = with_packages(legacy, add=(("tf-keras", "2.21.0"),), env={"TF_USE_LEGACY_KERAS": "1"})
    assert "tf-keras-env" not in rules(doctor(ok))


def test_two_tensorflow_distributions(keras3: Lock) -> None:
    bent = with_packages(keras3, add=(("tensorflow", "2.21.0"),))
    (f,) = [f for f in doctor(bent) if f.rule == "same-files"]
    assert "tensorflow" in f.message and "tensorflow-cpu" in f.message and "[python] variants" in f.fix


def test_mlflow_and_skinny_at_different_versions(keras3: Lock) -> None:
    bent = with_packages(keras3, add=(("mlflow", "3.1.0"),))
    assert "same-files" in rules(doctor(bent))
    same = with_packages(keras3, add=(("mlflow", "3.17.2"),))
    assert "same-files" not in rules(doctor(same))


def test_a_logged_pin_the_lock_changed(keras3: Lock) -> None:
    bent = with_packages(keras3, drop=("numpy",), add=(("numpy", "2.3.0"),))
    (f,) = [f for f in doctor(bent) if f.rule == "changed-pin"]
    assert "numpy==2.4.6" in f.message and "2.3.0" in f.message


def test_every_rule_has_a_test() -> None:
    tested = {"python-minor", "mlflow-version", "loader-module", "keras-major", "tf-keras-env", "same-files",
              "changed-pin", "omitted", "yanked"}  # yanked: tests/test_lock_inputs.py
    assert {name for name, _ in RULES} <= tested


def test_omitted_distributions_are_a_warning(keras3: Lock) -> None:
    bent = dataclasses.replace(keras3, python=dataclasses.replace(keras3.python, omitted=("tensorboard",)))
    (f,) = doctor(bent)
    assert f.rule == "omitted" and f.severity == "warning"
