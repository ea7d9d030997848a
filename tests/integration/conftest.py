"""Fixtures for integration tests: real edgecache processes, real upstream registries.

One server per test module where tests do not disturb each other (scope="module"), so the
suite stays quick on 2 cores (`edgecache`, in tests/conftest.py). Tests that kill or
reconfigure a server start their own.

`EDGECACHE_IT_AGAINST=docker-registry` runs the real-client tests (skopeo, oras, ctr) against
the upstream `docker-registry` instead of edgecache: a quick way to tell a test bug from an
edgecache bug. CI never sets it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import DockerRegistry, EdgecacheServer, anonymous_push_config


@pytest.fixture(scope="module")
def registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EdgecacheServer | DockerRegistry]:
    """The registry real clients push to and pull from: edgecache (see module docstring)."""
    base: Path = tmp_path_factory.mktemp("registry")
    target: EdgecacheServer | DockerRegistry
    if os.environ.get("EDGECACHE_IT_AGAINST") == "docker-registry":
        target = DockerRegistry(base)
    else:
        target = EdgecacheServer(base, config_text=anonymous_push_config())
    with target:
        yield target
