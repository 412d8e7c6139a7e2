"""Suite-wide hooks.

Under CI (``CI=true``) a test marked ``real`` must run: if it skips — a component not
installed, no root, no network namespaces — the skip is turned into a failure, so CI can
never go green while quietly not testing the real thing.
"""

from __future__ import annotations

import os

import pytest


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and not hasattr(report, "wasxfail")
            and item.get_closest_marker("real") is not None and _ci()):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"test marked 'real' was skipped under CI=true "
                           f"(real components must run in CI): {reason}")
