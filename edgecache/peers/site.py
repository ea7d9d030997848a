"""The site as this node sees it: the other members, how to reach them, and whom a miss asks.

Each other member is reached as an `Upstream` (upstream/client.py) whose requests are signed
(sign.py) and whose circuit breaker is the passive health check: after FAILURES consecutive
failed requests the member is skipped at once (not after a timeout on every request) until a
trial request succeeds, COOLDOWN seconds later. Budgets are short: a member that does not
accept a connection within CONNECT_TIMEOUT, or sends nothing for IDLE_TIMEOUT, counts as
failed and the miss moves on to the next member, then to the uplink.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from ..config import PeersConfig, UpstreamConfig
from ..upstream import Upstream
from ..upstream.breaker import CircuitBreaker
from . import ring, sign

CONNECT_TIMEOUT = 1.0
IDLE_TIMEOUT = 3.0
FAILURES = 3
COOLDOWN = 10.0


class Site:
    def __init__(self, config: PeersConfig, max_unsized_blob: int) -> None:
        self.config = config
        self.me = config.self_url
        self.members = frozenset(config.members)
        self.peers: Mapping[str, Upstream] = {
            url: Upstream(
                UpstreamConfig(
                    name=f"peer {url}",
                    url=url,
                    ca_file=config.ca_file,
                    connect_timeout=CONNECT_TIMEOUT,
                    idle_timeout=IDLE_TIMEOUT,
                    retries=0,
                ),
                breaker=CircuitBreaker(threshold=FAILURES, cooldown=COOLDOWN),
                max_unsized_blob=max_unsized_blob,
                signer=partial(sign.sign, config.secret, self.me),
            )
            for url in config.members
            if url != self.me
        }

    def sources(self, digest: str) -> tuple[list[Upstream], list[Upstream]]:
        """Whom a miss of `digest` asks: before the uplink, the members ranked above this
        node, owner first; after it (the uplink failed: content cached somewhere on the site
        still pulls), the members ranked below. Members whose circuit is open are left out.
        A peer's request is answered from disk or the uplink only, so neither list loops."""
        ranked = ring.above(self.members, self.me, digest)
        above = [self.peers[url] for url in ranked if self.peers[url].available]
        below = [peer for peer in self.all(digest) if peer not in above]
        return above, below

    def all(self, key: str) -> list[Upstream]:
        """Every other member whose circuit is closed, in rendezvous order of `key`."""
        ranked = ring.order(self.peers, key)
        return [self.peers[url] for url in ranked if self.peers[url].available]

    def verify(self, value: str, method: str, target: str) -> str:
        """The member that signed a request (sign.BadSignature: refused)."""
        return sign.verify(self.config.secret, self.members, value, method, target)

    async def aclose(self) -> None:
        for peer in self.peers.values():
            await peer.aclose()
