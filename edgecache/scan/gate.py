"""The pull gate: [[pull_policies]] applied to every manifest GET and HEAD a client makes.

For a repository the first matching policy names (none: no gate, at the cost of one cached
pattern lookup), in order:

- signature (`require_signature`): the cosign signature tag (`sha256-<hex>.sig`) must be in the
  repository (a proxied one asks its upstream); with `public_keys`, one of its simple-signing
  payloads must name this digest and verify with one of the keys (scan/cosign.py). Otherwise
  412 naming what is missing or wrong.
- (the scanner's own pulls of the manifest it scans, with the token edgecache gave it for that
  manifest, are not gated: a pull may be waiting for that very scan)
- severity (`block_severity`): the stored reports of the image's manifests (an index: each
  platform manifest's) must have no vulnerability at or above the threshold that the allowlist
  does not exempt; otherwise 412 with Harbor's message (scan/report.py).
- unscanned images: `allow` serves them, `deny` refuses them (412), `wait` starts their scan
  and holds the pull up to `wait` seconds; without an answer by then, `on_scanner_down`
  decides. The scan pulls through edgecache, so a proxied image is fetched from the upstream
  once, and the client's pull after it is a warm hit.

It applies alike to pushed, preloaded and proxied images, by tag and by digest, in every
serving process (a worker hands a pull that must wait, or a signature it must fetch, to the
owner), and to another member's pushed content relayed here (server/sitewide.py): its
report and signature are asked of the members too. A request from a member of the site is
not gated: the member gates what it serves its own client.
Decisions are cached per (repository, digest) until a report is stored anywhere (`scan_gen` in
the index) or, for signatures and refusals, for SHORT seconds.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ..bounded import BoundedCache
from ..cache.owner import NeedOwner
from ..cache.routing import resolve
from ..configvalues import ConfigError
from ..oci import errors, jsontext, mediatypes
from ..oci.digest import Digest
from ..oci.names import Reference
from ..peers.site import ANSWER_BUDGET
from ..preheat.policy import Selector, select_manifests
from ..store import ManifestInfo
from ..upstream import Upstream, UpstreamError
from ..upstream.client import RemoteManifest
from .config import PullPolicy, ScanSettings, parse_policy
from .cosign import (
    MAX_PAYLOADS,
    PublicKey,
    load_public_keys,
    signature_layers,
    signature_tag,
    verify,
)
from .report import Report, gate, gate_message
from .service import SCANNER_SUBJECT, ScanFailed, stored_report

if TYPE_CHECKING:
    from ..server.app import App
    from ..server.http import Request

log = logging.getLogger("edgecache.gate")

SHORT = 10.0  # seconds a refusal or a signature verdict is trusted
NOT_ON_SITE = 30.0  # seconds before the members are asked again for a report they lacked
SITE_BUDGET = 10.0  # seconds one manifest's report is looked for among the members
MAX_CHILDREN = 64  # platform manifests of an index one decision looks at
MAX_COPIED = 64 << 20  # bytes of a report blob copied from a member
DECISIONS = 10_000
MAX_SIGNATURE_BLOB = 1 << 20


class Gate:
    def __init__(self, app: App, settings: ScanSettings) -> None:
        self.app = app
        self.settings = settings
        self._policies: BoundedCache[str, int] = BoundedCache(4096)
        # (repo, digest) -> ((scan_gen, policy_gen), until when (None: until they move),
        #                     refusal message or "", reason)
        self._decisions: BoundedCache[tuple[str, str], _Decision] = BoundedCache(DECISIONS)
        self.policies: list[PullPolicy] = []
        self.admin_names: set[str] = set()
        self._keys: list[list[PublicKey]] = []
        self._gen = -1
        # (repo, digest) no member had a report of, lately
        self._not_on_site: BoundedCache[tuple[str, str], float] = BoundedCache(
            DECISIONS, ttl=NOT_ON_SITE
        )
        self._asking: dict[tuple[str, str], trio.Event] = {}
        self.on_blocked: Callable[[str], None] = lambda reason: None
        self.refresh()

    def refresh(self) -> None:
        """The policies: those set through the admin API (by name), then the config's; read
        again whenever `policy_gen` in the index moved (any process may have set one)."""
        gen = self.app.store.index.meta_int("policy_gen")
        if gen == self._gen:
            return
        admin: list[PullPolicy] = []
        for name, table in self.app.store.index.pull_policies():
            try:
                admin.append(
                    parse_policy(f"pull policy {name!r}", table, self.settings.scanners, name)
                )
            except ConfigError as exc:  # a key file gone since: it refuses its repositories
                log.warning("pull policy %s set through the admin API is not valid: %s", name, exc)
                admin.append(_refusing(name, table))
        self.policies = admin + list(self.settings.policies)
        self.admin_names = {p.name for p in admin}
        self._keys = [load_public_keys(p.public_keys) for p in self.policies]
        self._policies.clear()
        self._decisions.clear()
        self._gen = gen

    @property
    def enabled(self) -> bool:
        return bool(self.policies)

    def policy(self, repo: str) -> int | None:
        self.refresh()
        index = self._policies.get(repo)
        if index is None:
            index = next(
                (i for i, p in enumerate(self.policies) if p.selector.repository_matches(repo)),
                -1,
            )
            self._policies.put(repo, index)
        return None if index < 0 else index

    async def check(self, req: Request, repo: str, info: ManifestInfo) -> None:
        """Raise PolicyViolation (412) when the policy refuses this pull."""
        await self._check(req, repo, _Subject(str(info.digest), info.media_type, info.path))

    async def check_relayed(self, req: Request, repo: str, remote: RemoteManifest) -> None:
        """The same for a manifest another member holds, relayed (server/sitewide.py)."""
        await self._check(req, repo, _Subject(str(remote.digest), remote.media_type, remote.data))

    async def _check(self, req: Request, repo: str, subject: _Subject) -> None:
        if req.peer is not None:
            return  # a member fetching or relaying for its own clients, which it gates itself
        if req.extra.get("user") == SCANNER_SUBJECT and subject.digest in req.extra.get(
            "digests", ()
        ):
            return  # the scanner reading the image it scans, which a pull may be waiting for
        number = self.policy(repo)
        if number is None:
            return
        # Taken now: the policies may change (refresh) while this decision awaits.
        policy, keys, policy_gen = self.policies[number], self._keys[number], self._gen
        digest = subject.digest
        gens = (self.app.store.index.meta_int("scan_gen"), policy_gen)
        cached = self._decisions.get((repo, digest))
        now = time.monotonic()
        if cached is not None and cached[0] == gens and (cached[1] is None or now < cached[1]):
            if cached[2]:
                self._refuse(cached[3], cached[2])
            return
        message, reason, lasting = await self._decide(repo, subject, policy, keys)
        # A refusal, a signature's verdict, an allowlist with expiries: re-made after SHORT
        # seconds; a verdict on reports alone: until a report or a policy changes.
        expires = None if lasting and not message else now + SHORT
        self._decisions.put((repo, digest), (gens, expires, message, reason))
        if message:
            self._refuse(reason, message)

    def _refuse(self, reason: str, message: str) -> None:
        self.on_blocked(reason)
        raise errors.PolicyViolation(message, detail={"reason": reason})

    async def _decide(
        self, repo: str, info: _Subject, policy: PullPolicy, keys: list[PublicKey]
    ) -> tuple[str, str, bool]:
        """(refusal message or "", reason, whether the decision may be cached)."""
        digest = info.digest
        if policy.require_signature:
            why = await self._signature(repo, digest, keys)
            if why:
                return (
                    f"{repo}@{digest} may not be pulled: {why} (require_signature)",
                    "signature",
                    False,
                )
        if not policy.needs_report:
            return "", "", False
        manifests = self._image_manifests(info)
        if len(manifests) > MAX_CHILDREN:
            return (
                f"{repo}@{digest} is an index of {len(manifests)} platform manifests; this "
                f"registry's pull policy checks at most {MAX_CHILDREN}",
                "unscanned",
                False,
            )
        reports: list[Report] = []
        missing: list[str] = []
        for child in manifests:
            found = self._report(repo, child)
            if found is None:
                found = await self._from_site(repo, child)
            if found is None:
                missing.append(child)
            else:
                reports.append(found)
        if missing:
            if policy.unscanned == "allow":
                pass
            elif policy.unscanned == "deny":
                return (
                    f"{repo}@{digest} has not been scanned yet and this registry's pull policy "
                    'denies unscanned images (unscanned = "deny"); ask for a scan with '
                    "`edgecache scan`",
                    "unscanned",
                    False,
                )
            else:
                reports_now = await self._wait_for_scans(repo, digest, missing, policy)
                if reports_now is None:
                    if policy.on_scanner_down == "deny":
                        return (
                            f"{repo}@{digest} could not be scanned within {policy.wait:g} s "
                            "(scanner down or slow) and this registry's pull policy denies "
                            'it then (on_scanner_down = "deny"); retry later',
                            "scanner_down",
                            False,
                        )
                    return "", "", False
                reports += reports_now
                missing = []
        if not policy.block_severity:
            return "", "", not missing
        now = datetime.datetime.now(datetime.UTC)
        count = 0
        matched: list[str] = []
        for report in reports:
            result = gate(report, policy.block_severity, policy.allowlist, now)
            if result.blocked:
                count += result.count
                matched += [m for m in result.matched if m not in matched]
        if count:
            expiring = any(e.expires is not None for e in policy.allowlist)
            # A decision with allowlist expiries in it is re-made after SHORT seconds.
            return (
                gate_message(count, policy.block_severity, matched),
                "vulnerabilities",
                not expiring,
            )
        return "", "", not missing and not any(e.expires for e in policy.allowlist)

    def _image_manifests(self, info: _Subject) -> list[str]:
        if not mediatypes.is_index_type(info.media_type):
            return [info.digest]
        try:
            index = json.loads(info.read())
            return [e["digest"] for e in select_manifests(index, ())]
        except (OSError, ValueError, KeyError, TypeError):
            return [info.digest]

    def _report(self, repo: str, digest: str) -> Report | None:
        found = stored_report(self.app, repo, digest)
        return None if found is None else found[1]

    async def _from_site(self, repo: str, digest: str) -> Report | None:
        """A report another member of the site recorded (scanned there, or preloaded), copied
        here: each member's scan records of the digest (GET /_edgecache/peer/reports/...,
        signed; never the referrers API, which an upstream fills), then the report's manifest
        and blobs, each verified against its digest. A member that fails is passed over; when
        none had one, they are not asked again for NOT_ON_SITE seconds. One lookup per
        (repository, digest) at a time: others wait for it."""
        site = self.app.fetcher.site
        if site is None or self._not_on_site.get((repo, digest)) is not None:
            return None
        if self.app.owner is not None:
            raise NeedOwner("a report another member may have")
        key = (repo, digest)
        running = self._asking.get(key)
        if running is not None:
            await running.wait()
            return self._report(repo, digest)
        done = self._asking[key] = trio.Event()
        try:
            with trio.move_on_after(SITE_BUDGET):
                for member in site.all(digest):
                    try:
                        found = await self._copy_report(member, repo, digest)
                    except Exception as exc:  # whatever a member answers: the next one
                        log.info("report of %s@%s from %s: %s: %s", repo, digest, member.name,
                                 type(exc).__name__, exc)  # fmt: skip
                        continue
                    if found is not None:
                        return found
            self._not_on_site.put(key, time.monotonic())
            return None
        finally:
            del self._asking[key]
            done.set()

    async def _copy_report(self, member: Upstream, repo: str, digest: str) -> Report | None:
        from ..oci.manifest import parse_manifest
        from ..oci.names import validate_repository
        from .service import record_report

        path = f"/_edgecache/peer/reports/{digest}"
        answer = jsontext.loads(await member.get_small(path, deadline=ANSWER_BUDGET))
        reports = answer.get("reports") if isinstance(answer, dict) else None
        if not isinstance(reports, list):
            raise ValueError("not a reports answer")
        for entry in reports[:4]:
            if not isinstance(entry, dict):
                continue
            its_repo = validate_repository(str(entry.get("repo")))
            artifact = str(Digest.parse(str(entry.get("artifact"))))
            remote = await member.get_manifest(its_repo, artifact, deadline=ANSWER_BUDGET)
            if str(remote.digest) != artifact:
                raise ValueError(f"asked for {artifact}, got {remote.digest}")
            document = jsontext.loads(remote.data)
            if not isinstance(document, dict):
                raise ValueError("the report artifact is not a JSON object")
            if (document.get("subject") or {}).get("digest") != digest:
                continue
            manifest = parse_manifest(remote.data, remote.media_type)
            blobs = {}
            for layer in [manifest.config, *manifest.layers] if manifest.config else []:
                blobs[str(layer.digest)] = await self._small_blob(
                    member, its_repo, {"digest": str(layer.digest), "size": layer.size}
                )
            report = await record_report(
                self.app, repo, digest, str(entry.get("scanner"))[:64], remote.data, manifest,
                blobs,
            )  # fmt: skip
            log.info("report of %s@%s copied from member %s", repo, digest, member.name)
            return report
        return None

    async def _small_blob(self, member: Upstream, repo: str, layer: dict[str, object]) -> bytes:
        digest = Digest.parse(str(layer["digest"]))
        size = layer.get("size")
        if not isinstance(size, int) or not 0 <= size <= MAX_COPIED:
            raise ValueError(f"a report blob of {size} bytes")
        data = bytearray()
        async with member.open_blob(repo, digest) as stream:
            async for chunk in stream.chunks():
                data += chunk
                if len(data) > size:
                    raise ValueError(f"blob {digest} runs past its {size} bytes")
        if len(data) != size or Digest.of_bytes(bytes(data)) != digest:
            raise ValueError(f"blob {digest} from the member does not verify")
        return bytes(data)

    async def _wait_for_scans(
        self, repo: str, digest: str, missing: list[str], policy: PullPolicy
    ) -> list[Report] | None:
        """Start the scans and wait up to policy.wait; the reports, or None (no answer)."""
        service = self.app.scans
        if self.app.owner is not None or service is None:
            raise NeedOwner("a pull waiting for its scan")
        try:
            tasks = [service.request(repo, child, "pull") for child in missing]
        except ScanFailed as exc:  # the queue is full: busy, not down; the client retries
            raise errors.Unavailable(
                f"{repo}@{digest} must be scanned before it is pulled, and the scans are busy "
                f"({exc}); retry later"
            ) from None
        with trio.move_on_after(policy.wait):
            for task in tasks:
                await task.done.wait()
        reports = [self._report(repo, child) for child in missing]
        if any(r is None for r in reports):
            return None
        return [r for r in reports if r is not None]

    async def _signature(self, repo: str, digest: str, keys: list[PublicKey]) -> str:
        """ "" when the image is signed as the policy asks; else what is wrong."""
        tag = signature_tag(digest)
        data = await self._signature_manifest(repo, tag)
        if data is None:
            return f"no cosign signature ({tag})"
        if not keys:
            return ""
        try:
            manifest = json.loads(data)
            sizes = {layer["digest"]: layer.get("size") for layer in manifest["layers"]}
        except (ValueError, KeyError, TypeError):
            return "its signature manifest cannot be read"
        payloads = []
        # One more than verify() checks: an image with too many signatures is refused, named.
        for layer_digest, signature in signature_layers(manifest)[: MAX_PAYLOADS + 1]:
            blob = await self._signature_blob(repo, layer_digest, sizes.get(layer_digest))
            if blob is not None:
                payloads.append((blob, signature))
        verdict = verify(digest, payloads, keys)
        return "" if verdict.ok else f"its signature does not verify: {verdict.reason}"

    async def _signature_manifest(self, repo: str, tag: str) -> bytes | None:
        """The signature manifest: stored here, else from the upstream (a proxied
        repository), else from a member of the site (pushed content relayed)."""
        info = self.app.store.manifest(repo, tag)
        if info is not None:
            return await trio.to_thread.run_sync(info.path.read_bytes)
        target = resolve(self.app.config, repo, None)
        site = self.app.fetcher.site
        if not target.proxied and site is None:
            return None
        if self.app.owner is not None:
            raise NeedOwner("a signature to fetch")
        if target.proxied:
            try:
                result = await self.app.proxy.manifest(
                    target, self.app.upstream(target), Reference(tag=tag), head=False
                )
            except errors.OCIError:
                return None
            if result.info is None:
                return None
            return await trio.to_thread.run_sync(result.info.path.read_bytes)
        assert site is not None
        async for _, remote in site.manifests(repo, tag):
            return remote.data
        return None

    async def _signature_blob(self, repo: str, digest: str, size: object) -> bytes | None:
        parsed = Digest.parse(digest)
        blob = self.app.store.blob(repo, parsed)
        if blob is not None:
            if blob.size > MAX_SIGNATURE_BLOB:
                return None
            return await trio.to_thread.run_sync(blob.path.read_bytes)
        target = resolve(self.app.config, repo, None)
        site = self.app.fetcher.site
        if self.app.owner is not None and (target.proxied or site is not None):
            raise NeedOwner("a signature to fetch")
        if not isinstance(size, int) or not 0 <= size <= MAX_SIGNATURE_BLOB:
            return None  # declared too large (or not at all): never downloaded
        if target.proxied:
            from ..preheat.providers import Fail, Retry, ensure_blob

            try:
                await ensure_blob(self.app, target, parsed, None)
            except (Fail, Retry, errors.OCIError):
                return None
            blob = self.app.store.blob(repo, parsed)
            if blob is None or blob.size > MAX_SIGNATURE_BLOB:
                return None
            return await trio.to_thread.run_sync(blob.path.read_bytes)
        if site is None:
            return None
        for member in site.all(digest):
            try:
                return await self._small_blob(member, repo, {"digest": digest, "size": size})
            except (UpstreamError, ValueError) as exc:
                log.info("signature blob %s of %s from %s: %s", digest, repo, member.name, exc)
        return None


_Decision = tuple[tuple[int, int], float | None, str, str]


def _refusing(name: str, table: object) -> PullPolicy:
    """An admin policy that no longer loads (a key file gone): it refuses every pull of the
    repositories it named (the safe side), and no other."""
    patterns = table.get("repositories") if isinstance(table, dict) else None
    try:
        selector = Selector(repositories=tuple(str(p) for p in patterns or ()))
    except (ValueError, TypeError):
        selector = Selector(repositories=())
    return PullPolicy(selector, name=name, unscanned="deny", require_signature=True)


class _Subject:
    """The manifest a pull asks for: stored here (a file) or relayed (its bytes)."""

    def __init__(self, digest: str, media_type: str, source: Path | bytes) -> None:
        self.digest = digest
        self.media_type = media_type
        self._source = source

    def read(self) -> bytes:
        return self._source if isinstance(self._source, bytes) else self._source.read_bytes()
