"""LOCKBUILD_STRICT_TESTS: one hook (tests/conftest.py) turns every skip into a failure, however it
was raised, except the host-specific skips listed in ALLOWED_SKIPS; run in a nested pytest."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ALLOWED_SKIPS, STRICT, allowed_skip

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent

SKIPS = '''
import pytest

from tests.conftest_services import need_tool, unavailable

def test_bare_skip():
    pytest.skip("a bare pytest.skip")

@pytest.mark.skip(reason="a marker")
def test_marker():
    pass

@pytest.mark.skipif(True, reason="a condition")
def test_skipif():
    pass

def test_unavailable():
    unavailable("no frobnicator here")

def test_missing_tool():
    need_tool("lockbuild-no-such-tool")

def test_importorskip():
    pytest.importorskip("lockbuild_no_such_module")

@pytest.mark.xfail(reason="known", strict=True)
def test_xfail():
    assert False

def test_passes():
    pass
'''


@pytest.fixture()
def nested(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest("from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport  # noqa")
    pytester.makepyfile(test_skips=SKIPS)
    return pytester


def test_without_strict_mode_skips_stay_skips(nested: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STRICT, raising=False)
    nested.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1, skipped=6, xfailed=1)


def test_strict_mode_fails_every_skip_however_it_was_raised(nested: pytest.Pytester,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STRICT, "1")
    result = nested.runpytest("-p", "no:cacheprovider", "-rf")
    result.assert_outcomes(passed=1, failed=4, errors=2, xfailed=1)  # a marker skips in setup: an error
    result.stdout.fnmatch_lines([f"*skipped under {STRICT}=1*no frobnicator here*"])


def test_strict_mode_fails_a_module_level_skip(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeconftest("from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport  # noqa")
    pytester.makepyfile(test_mod="import pytest\npytest.skip('whole module', allow_module_level=True)\n"
                                 "def test_x():\n    pass\n")
    monkeypatch.setenv(STRICT, "1")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*whole module*"])


def test_an_allowed_skip_needs_its_test_and_its_reason() -> None:
    name, prefix = next(iter(ALLOWED_SKIPS))
    assert allowed_skip(f"{name}[param]", prefix + " aarch64") is not None
    assert allowed_skip(name, "qemu-x86_64 not installed: run scripts/install-deps.sh") is None  # a missing tool
    assert allowed_skip("tests/test_other.py::test_x", prefix + " aarch64") is None


def test_every_allowed_skip_names_a_test_that_raises_that_skip() -> None:
    """No stale entries: each listed test exists, and its body skips with the listed reason."""
    for (nodeid, prefix), why in ALLOWED_SKIPS.items():
        path, function = nodeid.split("::")
        tree = ast.parse((ROOT / path).read_text())
        defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function]
        assert defs, f"ALLOWED_SKIPS names {nodeid}, which does not exist"
        strings = [n.value for n in ast.walk(defs[0]) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        assert any(s.startswith(prefix) for s in strings), f"{nodeid} no longer skips with {prefix!r}"
        assert len(why) > 40, f"{nodeid}: say why the skip is legitimate"
