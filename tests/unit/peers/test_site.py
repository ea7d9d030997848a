"""Site membership from DNS (peers/site.py), with a resolver standing in for the DNS."""

from __future__ import annotations

import pytest

from edgecache.config import PeersConfig
from edgecache.peers import site as site_module
from edgecache.peers.site import Site

SECRET = b"0123456789abcdef-secret"


def resolver(answers: list[object]):  # each call pops the next answer (a list or an error)
    async def resolve(host: str, port: int) -> list[str]:
        assert (host, port) == ("peers.test", 5000)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    return resolve


async def test_members_follow_the_dns_and_this_node_is_the_one_listen_names() -> None:
    answers: list[object] = [
        ["10.0.0.1", "10.0.0.2"],
        ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
        OSError("temporary failure in name resolution"),
        ["10.0.0.1", "10.0.0.3"],
    ]
    config = PeersConfig((), "", SECRET, dns="peers.test:5000")
    site = Site(config, 1 << 30, listen="10.0.0.1:5000", resolve=resolver(answers))
    assert site.sources("sha256:" + "a" * 64) == ([], [])  # this node is not known yet
    await site.refresh()
    assert site.me == "http://10.0.0.1:5000"
    assert set(site.peers) == {"http://10.0.0.2:5000"}
    await site.refresh()
    assert set(site.peers) == {"http://10.0.0.2:5000", "http://10.0.0.3:5000"}
    await site.refresh()  # a failed lookup keeps the members
    assert set(site.peers) == {"http://10.0.0.2:5000", "http://10.0.0.3:5000"}
    await site.refresh()
    assert set(site.peers) == {"http://10.0.0.3:5000"}
    above, below = site.sources("sha256:" + "b" * 64)
    assert {p.config.url for p in above + below} == {"http://10.0.0.3:5000"}
    # Requests are signed as the node found.
    signer = site.peers["http://10.0.0.3:5000"]._session.signer
    assert signer is not None and signer("GET", "/v2/").startswith("v1 http://10.0.0.1:5000 ")
    await site.aclose()


async def test_this_node_is_the_one_address_of_this_host_when_listen_names_none() -> None:
    # 127.0.0.1 is this host's; 192.0.2.1 (TEST-NET-1) is not, so binding to it fails.
    config = PeersConfig((), "", SECRET, dns="peers.test:5000")
    site = Site(
        config, 1 << 30, listen="0.0.0.0:5000", resolve=resolver([["127.0.0.1", "192.0.2.1"]])
    )
    await site.refresh()
    assert site.me == "http://127.0.0.1:5000"
    assert set(site.peers) == {"http://192.0.2.1:5000"}
    await site.aclose()


async def test_an_unknowable_self_asks_nobody(caplog: pytest.LogCaptureFixture) -> None:
    config = PeersConfig((), "", SECRET, dns="peers.test:5000")
    site = Site(
        config, 1 << 30, listen="0.0.0.0:5000", resolve=resolver([["127.0.0.2", "127.0.0.3"]])
    )
    await site.refresh()
    assert site.me == ""
    assert site.sources("sha256:" + "c" * 64) == ([], [])
    assert "set peers.self" in caplog.text
    await site.aclose()


async def test_a_dns_answer_adds_at_most_max_members() -> None:
    many = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(1200)]
    config = PeersConfig((), "", SECRET, dns="peers.test:5000")
    site = Site(config, 1 << 30, listen="10.1.0.1:5000", resolve=resolver([many]))
    await site.refresh()
    assert site.me == "http://10.1.0.1:5000"
    assert len(site.members) == site_module.MAX_MEMBERS
    await site.aclose()
