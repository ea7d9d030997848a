"""Shared pytest hooks: show the logs of real processes when a test fails, never leak them.

And the fixtures both the integration and the hostile suites start real servers with.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests import support
from tests.support import EdgecacheServer, anonymous_push_config, in_ci

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


@pytest.fixture(scope="module")
def edgecache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgecacheServer]:
    """A running edgecache that accepts anonymous pushes, shared by the tests of a module."""
    server = EdgecacheServer(
        tmp_path_factory.mktemp("edgecache"), config_text=anonymous_push_config()
    )
    with server:
        yield server


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs to fill (root needed: CI runs as root; elsewhere the test skips, and in
    CI a failed mount is a failure)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        message = f"cannot mount a tmpfs for the disk-full test: {result.stderr.strip()}"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
