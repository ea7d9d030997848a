"""What a worker keeps from the owner's answers (server/local.py LocalAnswers)."""

from __future__ import annotations

import time
from typing import Any

from edgecache.cache.owner import LIST_AGE, TAG_AGE, Answer
from edgecache.config import load
from edgecache.server.http import Request
from edgecache.server.local import LocalAnswers


def _request(**extra: Any) -> Request:
    scope = {"method": "GET", "path": "/v2/x/y/tags/list", "headers": []}
    req = Request.from_scope(scope, None, None)
    req.extra.update(extra)
    return req


def _answers(tag_ttl: float = 60.0, list_ttl: float = 300.0) -> LocalAnswers:
    overrides = {"proxy": {"tag_ttl": tag_ttl, "list_ttl": list_ttl}}
    return LocalAnswers(load(None, overrides=overrides).proxy)


def test_a_tag_is_fresh_for_what_is_left_of_tag_ttl() -> None:
    local = _answers(tag_ttl=60.0)
    key = ("up/x/y", "v1")
    local.learn(_request(tag_key=key), Answer(200, {TAG_AGE: "10.0"}, {}, None))
    assert local.fresh(*key)
    local.learn(_request(tag_key=key), Answer(200, {TAG_AGE: "61"}, {}, None))
    assert not local.fresh(*key)  # confirmed 61 s ago: already due


def test_no_age_no_nonsense_no_memory() -> None:
    local = _answers()
    key = ("up/x/y", "v1")
    for own in ({}, {TAG_AGE: "soon"}, {TAG_AGE: "nan"}):
        local.learn(_request(tag_key=key), Answer(200, own, {}, None))
        assert not local.fresh(*key), own


def test_lists_are_kept_only_whole_fresh_and_200() -> None:
    local = _answers(list_ttl=300.0)
    key = ("/v2/up/x/y/tags/list", "")
    headers = {"content-type": "application/json"}
    local.learn(_request(list_key=key), Answer(200, {LIST_AGE: "1"}, headers, None))
    assert local.lists.get(key) is None  # the body was not kept (too large, or cut off)
    local.learn(_request(list_key=key), Answer(404, {LIST_AGE: "1"}, headers, b"{}"))
    assert local.lists.get(key) is None
    local.learn(_request(list_key=key), Answer(200, {LIST_AGE: "400"}, headers, b"{}"))
    assert local.lists.get(key) is None  # older than list_ttl already
    local.learn(_request(list_key=key), Answer(200, {LIST_AGE: "100"}, headers, b'{"a":1}'))
    kept = local.lists.get(key)
    assert kept is not None and kept.body == b'{"a":1}'
    assert 99 < time.monotonic() - kept.fetched < 102
