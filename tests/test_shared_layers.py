"""Two models on the same wheels share their Python layers: same diff_id and digest even when built
in separate caches with different lock times, and a push of the second image to a real registry
uploads only its own layers (the registry already has the shared ones: HEAD before upload)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lockbuild.fetch.cache import Cache
from lockbuild.lockfile.io import read_lock
from tests.tiny_project import run_lockbuild, save_tiny_model

pytest_plugins = ["tests.conftest_services"]
pytestmark = pytest.mark.network


def test_two_models_share_wheel_layers_and_the_second_push_uploads_only_its_own(
    tiny_project: dict, registry: str, tmp_path: Path
) -> None:
    first_dir = tiny_project["dir"]
    first = read_lock(first_dir / "lockbuild.lock")
    work = tmp_path / "second"
    work.mkdir()
    save_tiny_model(work / "model")  # another model (MLflow writes a new uuid and time): another lock
    (work / "lockbuild.toml").write_text(
        f'[model]\nuri = "./model"\n\n[python]\nexclude-newer = "{first.python.exclude_newer}"\n\n'
        f'[image]\nname = "lockbuild-test/tiny-two"\ncompression = "{first.compression}"\n')  # the first's encoder
    run_lockbuild("lock", cwd=work)
    second = read_lock(work / "lockbuild.lock")
    assert second.model.tree_digest != first.model.tree_digest
    assert second.python.packages == first.python.packages and second.build == first.build

    # the second image is built from scratch in its own cache (blobs hard-linked: no downloads),
    # with another SOURCE_DATE_EPOCH: the lock-dependent layers differ, the wheel layers must not
    cache2 = tmp_path / "cache2"
    shutil.copytree(Cache().root / "blobs", cache2 / "blobs", copy_function=os.link)
    env = {"LOCKBUILD_CACHE": str(cache2), "SOURCE_DATE_EPOCH": str(first.epoch() + 86400)}
    a = json.loads(run_lockbuild("image", "--push", f"{registry}/models:one", "--json", cwd=first_dir).stdout)
    b = json.loads(run_lockbuild("image", "--push", f"{registry}/models:two", "--json", cwd=work, env=env).stdout)
    la = {x["name"]: x for x in a["layers"]}
    lb = {x["name"]: x for x in b["layers"]}
    assert not any(x["reused"] for x in b["layers"])  # really rebuilt
    shared = sorted(n for n in la if n.startswith("python"))
    assert "python-numpy" in shared and "python-pandas" in shared
    for n in shared:
        assert (la[n]["diff_id"], la[n]["digest"]) == (lb[n]["diff_id"], lb[n]["digest"]), n
    own = sorted(n for n in lb if not n.startswith("python"))
    assert all(la[n]["diff_id"] != lb[n]["diff_id"] for n in ("debian", "model"))
    assert b["push"]["skipped"] == len(shared)
    assert b["push"]["uploaded"] == len(own) + 1  # its own layers and its config
    assert b["push"]["bytes_uploaded"] < sum(lb[n]["size"] for n in own) + 100_000
