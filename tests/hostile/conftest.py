"""Fixtures for the hostile-input suite: real edgecache processes fed what an attacker or a
careless client sends.

Each module gets its own server (scope="module"); a test that needs an upstream starts it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.test_disk_full import small_disk  # a small tmpfs to fill
from tests.support import EdgecacheServer, anonymous_push_config

__all__ = ["small_disk"]


@pytest.fixture(scope="module")
def edgecache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgecacheServer]:
    """A running edgecache that accepts anonymous pushes, shared by the tests of a module."""
    server = EdgecacheServer(
        tmp_path_factory.mktemp("edgecache"), config_text=anonymous_push_config()
    )
    with server:
        yield server
