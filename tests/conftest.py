"""Session plugins, and strict mode: with LOCKBUILD_STRICT_TESTS=1 (.ci/run; scripts/run-tests.sh
under CI=true) every skip is a failure, whatever raised it (``unavailable()``, a bare
``pytest.skip``, a skip marker, a module-level skip), unless it is listed in ALLOWED_SKIPS with the
reason it is legitimate. One hook decides, so no skip can escape it."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

pytest_plugins = ["tests.mlflow_server", "tests.conftest_services", "tests.tiny_project"]

STRICT = "LOCKBUILD_STRICT_TESTS"

# The only skips strict mode lets through: a test that cannot apply to this HOST (never a missing
# tool, privilege, service or network: those fail). Key: (test file::function, start of the skip
# reason); value: why the skip is legitimate. On the x86-64 CI machine none of these fires.
ALLOWED_SKIPS: dict[tuple[str, str], str] = {
    ("tests/test_compression.py::test_compressed_bytes_are_the_same_on_every_x86_64_code_path",
     "x86-64 code paths: this host is"):
        "the x86-64 code paths (SSE4.2/AVX/AVX2/AVX-512) are run natively and under qemu-x86_64 CPU models: "
        "on an arm64 host there is no native x86-64 output to compare with",
    ("tests/test_compression.py::test_on_arm64_zstd_and_zlib_ng_give_the_same_bytes_and_isal_refuses",
     "compares with the x86-64 output: this host is"):
        "compares qemu-aarch64's output with the native x86-64 one: on a non-x86-64 host it would compare "
        "arm64 with itself",
    ("tests/test_compression.py::test_an_emulated_arm64_builder_builds_the_same_image",
     "compares with the x86-64 build: this host is"):
        "the same cross-CPU comparison for a whole build",
    ("tests/test_oci_layout.py::test_layout_copies_blobs_across_filesystems",
     "needs /dev/shm on another filesystem than the cache"):
        "a host whose /dev/shm is not a separate tmpfs has no second filesystem to copy across",
}


def strict() -> bool:
    return os.environ.get(STRICT) == "1"


def allowed_skip(nodeid: str, reason: str) -> str | None:
    """Why this skip is legitimate (ALLOWED_SKIPS), or None."""
    function = nodeid.split("[", 1)[0]
    for (name, prefix), why in ALLOWED_SKIPS.items():
        if (function == name or function.endswith("/" + name)) and reason.startswith(prefix):
            return why
    return None


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = _skip_reason(report)
    if allowed_skip(report.nodeid, reason) is not None:
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped under {STRICT}=1, which makes every skip not listed in tests/conftest.py "
                       f"ALLOWED_SKIPS a failure: {reason} (run scripts/install-deps.sh as root)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if strict() and report.skipped and not hasattr(report, "wasxfail"):
        _fail_skip(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, None, None]:
    outcome = yield
    report: pytest.CollectReport = outcome.get_result()
    if strict() and report.skipped:
        _fail_skip(report)


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the Docker engine is marked ``docker``, whether or not it says so: ``-m docker``
    is exactly the engine's tests. scripts/run-tests.sh runs those in one process and the rest beside
    them, so no two engine tests ever overlap (they check the engine as a whole: no container or image
    left behind, layers it already holds)."""
    for item in items:
        if "docker_engine" in item.fixturenames and item.get_closest_marker("docker") is None:
            item.add_marker(pytest.mark.docker)
