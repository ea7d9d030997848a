"""The site as this node sees it: the other members, how to reach them, and whom a miss asks.

Each other member is reached as an `Upstream` (upstream/client.py) whose requests are signed
(sign.py) and whose circuit breaker is the passive health check: after FAILURES consecutive
failed requests the member is skipped at once (not after a timeout on every request) until a
trial request succeeds, COOLDOWN seconds later. Budgets are short: a member that does not
accept a connection within CONNECT_TIMEOUT, or sends nothing for IDLE_TIMEOUT, counts as
failed and the miss moves on to the next member, then to the uplink.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import httpx
import trio

from ..config import PeersConfig, UpstreamConfig
from ..upstream import Upstream, UpstreamError
from ..upstream.breaker import BreakerState, CircuitBreaker
from ..upstream.client import RemoteManifest
from ..upstream.session import tls_context
from . import ring, sign

log = logging.getLogger("edgecache.peers")

# A member that has not answered a manifest (or a blob's head) in this long is passed over
# for the next (Spegel caps manifests at 3 s).
ANSWER_BUDGET = 3.0
CONNECT_TIMEOUT = 1.0
IDLE_TIMEOUT = 3.0
FAILURES = 3
COOLDOWN = 10.0
# The active health check (as Kraken's: every 10 s ([peers] probe_interval), 3 s timeout, down
# after FAILURES): a GET of each member's /readyz. A pass closes the member's circuit, a
# failure counts like a failed request, so a dead member is skipped before any client's
# request has to find out.
PROBE_TIMEOUT = 3.0
# Members a DNS answer may add: each costs a client and a probe every interval (a site of
# more nodes is for Dragonfly or Kraken, the preheat issue).
MAX_MEMBERS = 1000


class Site:
    def __init__(
        self,
        config: PeersConfig,
        max_unsized_blob: int,
        listen: str = "",
        scheme: str = "http",
        resolve: Resolver | None = None,
    ) -> None:
        self.config = config
        self.max_unsized_blob = max_unsized_blob
        self.me = config.self_url
        self.members = frozenset(config.members)
        self.peers: dict[str, Upstream] = {}
        self._listen = listen  # [server] listen: names this node's address among DNS answers
        self._scheme = scheme
        self._resolve = resolve or _resolve
        self._retired: list[Upstream] = []
        self._update(self.members)

    def _update(self, members: frozenset[str]) -> None:
        """Make `members` the site: a client for each new one (its health starts fresh),
        the clients of the ones gone retired (closed by the next refresh)."""
        self.members = members
        for url in members - {self.me} - set(self.peers):
            self.peers[url] = Upstream(
                UpstreamConfig(
                    name=f"peer {url}",
                    url=url,
                    ca_file=self.config.ca_file,
                    connect_timeout=CONNECT_TIMEOUT,
                    idle_timeout=IDLE_TIMEOUT,
                    retries=0,
                ),
                breaker=CircuitBreaker(threshold=FAILURES, cooldown=COOLDOWN),
                max_unsized_blob=self.max_unsized_blob,
                signer=self._sign,
            )
        for url in set(self.peers) - (members - {self.me}):
            self._retired.append(self.peers.pop(url))

    def _sign(self, method: str, target: str) -> str:
        return sign.sign(self.config.secret, self.me, method, target)

    async def refresh(self) -> None:
        """Re-resolve [peers] dns (nothing without it): the members are the static ones and
        one URL per address found. A failed lookup keeps the members as they were."""
        for old in self._retired:
            await old.aclose()
        self._retired.clear()
        if not self.config.dns:
            return
        host, _, port = self.config.dns.rpartition(":")
        try:
            addresses = await self._resolve(host.strip("[]"), int(port))
        except OSError as exc:
            log.warning("peers.dns %s: %s; members unchanged", self.config.dns, exc)
            return
        if len(addresses) > MAX_MEMBERS:
            log.warning(
                "peers.dns %s gave %d addresses; the first %d (sorted) are members",
                self.config.dns, len(addresses), MAX_MEMBERS,
            )  # fmt: skip
            addresses = sorted(addresses)[:MAX_MEMBERS]
        found = {_url(self._scheme, address, int(port)) for address in addresses}
        if not self.me:
            self.me = _detect_self(found, self._listen, self._scheme)
            if self.me:
                log.info("peers: this node is %s", self.me)
        members = frozenset(self.config.members) | found
        if members != self.members:
            log.info("peers: members are now %s", ", ".join(sorted(members)))
        self._update(members)

    async def probe(
        self, on_state: Callable[[str, bool], None], task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Probe every member every probe_interval, for ever; `on_state(url, up)` after each."""
        verify = tls_context(UpstreamConfig(name="peers", url="", ca_file=self.config.ca_file))
        timeout = httpx.Timeout(PROBE_TIMEOUT)
        async with httpx.AsyncClient(verify=verify, timeout=timeout, trust_env=False) as client:
            await self.refresh()
            task_status.started()
            while True:
                await self.refresh()
                async with trio.open_nursery() as nursery:
                    for url in self.peers:
                        nursery.start_soon(self._probe_one, client, url, on_state)
                await trio.sleep(self.config.probe_interval)

    async def _probe_one(
        self, client: httpx.AsyncClient, url: str, on_state: Callable[[str, bool], None]
    ) -> None:
        breaker = self.peers[url].breaker
        was_up = breaker.state is not BreakerState.OPEN
        ok = False
        with trio.move_on_after(PROBE_TIMEOUT):  # in all: a member may trickle its answer
            try:
                response = await client.get(f"{url}/readyz")
                ok = response.status_code == 200
            except httpx.HTTPError:
                pass
        if ok:
            breaker.success()
        else:
            breaker.failure()
        up = breaker.state is not BreakerState.OPEN
        if up != was_up:
            log.warning("peer %s is %s", url, "up" if up else "down (failed probes or requests)")
        on_state(url, up)

    def status(
        self, fetched: Mapping[str, float], served: Mapping[str, float]
    ) -> list[dict[str, Any]]:
        """One record per member for `edgecache status`: its state, the failures counted
        against it, the bytes fetched from it and served to it."""
        out: list[dict[str, Any]] = [
            {"member": self.me, "state": "self", "failures": 0, "fetched_from": 0, "served_to": 0}
        ]
        for url, peer in self.peers.items():
            state = peer.breaker.state
            out.append(
                {
                    "member": url,
                    "state": "up" if state is BreakerState.CLOSED else state.value,
                    "failures": peer.breaker.consecutive_failures,
                    "fetched_from": int(fetched.get(url, 0)),
                    "served_to": int(served.get(url, 0)),
                }
            )
        return out

    def sources(self, digest: str) -> tuple[list[Upstream], list[Upstream]]:
        """Whom a miss of `digest` asks: before the uplink, the members ranked above this
        node, owner first; after it (the uplink failed: content cached somewhere on the site
        still pulls), the members ranked below. Members whose circuit is open are left out.
        A peer's request is answered from disk or the uplink only, so neither list loops."""
        if not self.me:  # not known yet (dns without self): ask nobody
            return [], []
        ranked = ring.above(self.members, self.me, digest)
        above = [self.peers[url] for url in ranked if self.peers[url].available]
        below = [peer for peer in self.all(digest) if peer not in above]
        return above, below

    async def manifests(
        self, repo: str, reference: str
    ) -> AsyncIterator[tuple[Upstream, RemoteManifest]]:
        """The members' answers for a manifest, in rendezvous order of the reference (the
        load spreads), each asked within ANSWER_BUDGET; members that fail are passed over."""
        for peer in self.all(f"{repo}:{reference}"):
            try:
                remote = await peer.get_manifest(repo, reference, deadline=ANSWER_BUDGET)
            except UpstreamError as exc:
                log.debug("manifest %s of %s: %s: %s", reference, repo, peer.name, exc)
                continue
            yield peer, remote

    def all(self, key: str) -> list[Upstream]:
        """Every other member whose circuit is closed, in rendezvous order of `key`."""
        if not self.me:
            return []
        ranked = ring.order(self.peers, key)
        return [self.peers[url] for url in ranked if self.peers[url].available]

    async def aclose(self) -> None:
        for peer in [*self.peers.values(), *self._retired]:
            await peer.aclose()


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def _resolve(host: str, port: int) -> list[str]:
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def _url(scheme: str, address: str, port: int) -> str:
    return f"{scheme}://[{address}]:{port}" if ":" in address else f"{scheme}://{address}:{port}"


def _detect_self(found: set[str], listen: str, scheme: str) -> str:
    """This node among the members DNS gave: the one [server] listen names, else the only
    one whose address this host has (binding to it works). "" when it cannot be told."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host and host not in ("0.0.0.0", "::") and port.isdigit():
        mine = _url(scheme, host, int(port))
        return mine if mine in found else ""
    local = []
    for url in sorted(found):
        address = url.split("//", 1)[1].rpartition(":")[0].strip("[]")
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((address, 0))
            except OSError:
                continue
        local.append(url)
    if len(local) != 1:
        log.warning(
            "peers: cannot tell which of %s is this node (%d are this host's); set peers.self",
            ", ".join(sorted(found)) or "no address", len(local),
        )  # fmt: skip
        return ""
    return local[0]
