"""Fixtures for the hostile-input suite: real edgecache processes fed what an attacker or a
careless client sends.

Each module gets its own server (scope="module"; `edgecache` and `small_disk` are in
tests/conftest.py), and its own upstream when it asks for one (`upstream`, below).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.upstreams import RunningUpstream, start_registry


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningUpstream]:
    """A real docker-registry without auth, one per module that asks for it."""
    with start_registry(tmp_path_factory.mktemp("upstream"), "anonymous") as registry:
        yield registry
