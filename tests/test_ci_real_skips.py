"""tests/conftest.py: under CI=true a skipped ``real`` test fails; otherwise it skips."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py").read_text()

TESTS = """
import pytest

@pytest.mark.real
def test_real_marker_skip():
    pass

@pytest.mark.real
def test_real_runtime_skip():
    pytest.skip("registry not installed")

def test_plain_skip():
    pytest.skip("not real: may skip")

@pytest.mark.real
@pytest.mark.xfail(reason="known")
def test_real_xfail():
    assert False

@pytest.mark.real
def test_real_passes():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nmarkers =\n    real: needs real components\n")
    pytester.makepyfile(test_inner=TESTS.replace(
        "def test_real_marker_skip():", "@pytest.mark.skip(reason='no dockerd')\ndef test_real_marker_skip():"))
    return pytester


def test_real_skip_fails_under_ci(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    result = suite.runpytest("-p", "no:cacheprovider", "-rA")
    # A skip marker fires in setup, so that one is reported as an error; both fail the run.
    result.assert_outcomes(passed=1, failed=1, errors=1, skipped=1, xfailed=1)
    result.stdout.fnmatch_lines([
        "*test marked 'real' was skipped under CI=true*no dockerd*",
        "*test marked 'real' was skipped under CI=true*registry not installed*",
    ])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


@pytest.mark.parametrize("ci", [None, "false", ""])
def test_real_skip_is_a_skip_outside_ci(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                        ci: str | None) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    result = suite.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
