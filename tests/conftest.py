"""Shared pytest hooks: show the logs of real processes when a test fails, never leak them."""

from __future__ import annotations

import time
from collections.abc import Generator

import pytest

from tests import support

_started_at = pytest.StashKey[float]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_started_at] = time.monotonic()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.failed:
        since = item.stash.get(_started_at, 0.0)
        for proc in support.processes_active_since(since):
            report.sections.append((f"{proc.name} log ({proc.log_path})", proc.log_text()))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Anything a test started and did not stop (it failed before its teardown): stop it,
    # by its own pid.
    support.stop_all_processes()
