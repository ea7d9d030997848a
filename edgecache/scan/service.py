"""Scans through Harbor's pluggable scanner adapter API, run by the process that owns fetches.

A scan of an image is a scan of each of its single-platform manifests (an index's attestation
manifests are not images). For one manifest and one scanner:

1. `POST /api/v1/scan` with this edgecache's URL and a bearer token edgecache issued for pull
   on that one repository, valid as long as the scan may take (server/tokens.py): the adapter
   pulls the image through edgecache, never from the upstream.
2. `GET /api/v1/scan/{id}/report` (Accept: the Harbor report type) after 1 s, then every
   `Refresh-After` (or `Retry-After`) while it answers 302; a 404 means the adapter lost the
   scan: it is submitted once more; other failures are retried with back-off; all of it within
   `[scan] timeout`. The other report type the adapter produces is asked for once the first is
   ready.
3. The reports are stored as an OCI artifact whose subject is the manifest (artifactType
   REPORT_ARTIFACT, one layer per report type, annotations naming the scanner): they show in
   the referrers API, are exported with the image and kept by GC as long as it is; and a small
   record in the index (`scans` database: <manifest digest>\\0<scanner> -> severity, the
   artifact's digest, when) is what the pull gate (scan/gate.py) reads. The `scan_gen` counter
   in `meta` is bumped so that every serving process drops its cached gate decisions.

Triggers: `[scan] on` events (push, preload, the first proxy fetch of a manifest), the `[scan]
schedule` (rescans of everything scanned before: vulnerability databases change), `edgecache
scan IMAGE` and the admin API, and a pull that a policy's `unscanned = "wait"` holds. At most
`[scan] concurrency` scans run at once; a scan of a manifest already queued or running is
joined, never started twice; at most MAX_QUEUED wait.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import trio

from ..bounded import BoundedCache
from ..cache.routing import resolve
from ..oci import errors, jsontext, mediatypes
from ..oci.digest import Digest
from ..oci.manifest import Manifest, parse_manifest
from ..preheat.policy import select_manifests
from ..preheat.providers import printable
from ..upstream.session import call_service
from .config import ScannerConfig, ScanSettings
from .report import HARBOR_REPORT, VULN_REPORT_11, Report, parse_report

if TYPE_CHECKING:
    from ..server.app import App

log = logging.getLogger("edgecache.scan")

# The subject of the scanner's pull tokens: no user can have it (':' ends a user name), and
# the gate lets it read an image it holds for its scan (scan/gate.py).
SCANNER_SUBJECT = "edgecache:scanner"
SCANNER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SCAN_REQUEST = "application/vnd.scanner.adapter.scan.request+json; version=1.0"
SCAN_RESPONSE = "application/vnd.scanner.adapter.scan.response+json; version=1.0"
METADATA = "application/vnd.scanner.adapter.metadata+json; version=1.0"
REPORT_ARTIFACT = "application/vnd.edgecache.vulnerability.report.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SBOM_REPORT = "application/vnd.security.sbom.report+json; version=1.0"
SPDX = "application/spdx+json"
SBOM_TYPES = (SPDX, "application/vnd.cyclonedx+json")
EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
SCANNER_ANNOTATION = "io.edgecache.scanner"
SEVERITY_ANNOTATION = "io.edgecache.severity"
CREATED = "org.opencontainers.image.created"
IMAGE_CONFIGS = (
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
)
MAX_QUEUED = 1000
FIRST_POLL = 1.0  # seconds before the first report request (Harbor waits 2)
MAX_POLL = 30.0
MAX_REPORT = 64 << 20
REPORT_DEADLINE = 300.0  # seconds to download one report
MAX_RECORDED = 5000  # vulnerabilities a gate record keeps (ids and severities)


class ScanFailed(Exception):
    """The scan could not be done (the message says why; never a credential)."""


@dataclass
class Task:
    repo: str
    digest: str
    scanner: str
    trigger: str
    done: trio.Event = field(default_factory=trio.Event)
    error: str = ""
    severity: str = ""
    started: float = 0.0


class ScanService:
    def __init__(
        self, app: App, settings: ScanSettings, clock: Callable[[], float] = time.time
    ) -> None:
        self.app = app
        self.settings = settings
        self.clock = clock
        self.public_url = ""
        self._tasks: dict[tuple[str, str], Task] = {}  # queued or running, by (digest, scanner)
        self._send, self._receive = trio.open_memory_channel[Task](MAX_QUEUED)
        self.metadata: dict[str, dict[str, Any]] = {}
        self.on_result: Callable[[str, str], None] = lambda scanner, result: None
        self.on_up: Callable[[str, bool], None] = lambda scanner, up: None

    # ---- asking for scans ------------------------------------------------------------------

    def request(self, repo: str, digest: str, trigger: str, scanner: str | None = None) -> Task:
        """The scan of one manifest (queued, or the one already queued or running)."""
        config = self._scanner(scanner)
        key = (digest, config.name)
        task = self._tasks.get(key)
        if task is not None:
            return task
        task = Task(repo, digest, config.name, trigger)
        try:
            self._send.send_nowait(task)
        except trio.WouldBlock:
            raise ScanFailed(f"{MAX_QUEUED} scans are waiting already; try again later") from None
        self._tasks[key] = task
        return task

    def _scanner(self, name: str | None) -> ScannerConfig:
        if name is None:
            found = self.settings.default_scanner
            if found is None:
                raise ScanFailed("no scanner is configured ([scanners.<name>])")
            return found
        found = self.settings.scanners.get(name)
        if found is None:
            raise ScanFailed(
                f"no scanner {name!r} (configured: {', '.join(self.settings.scanners)})"
            )
        return found

    def image_manifests(self, repo: str, digest: str) -> list[str]:
        """The single-platform manifests a scan of this manifest covers."""
        record = self.app.store.index.manifest(digest)
        if record is None:
            return []
        if not mediatypes.is_index_type(record["media_type"]):
            # An image, not an artifact (a signature, a report, an SBOM): only images scan.
            kind = record.get("artifact_type")
            return [digest] if kind is None or kind in IMAGE_CONFIGS else []
        path = self.app.store.layout.blob_path(Digest.parse(digest))
        try:
            index = json.loads(path.read_bytes())
            return [e["digest"] for e in select_manifests(index, ())]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def scan_image(
        self, repo: str, digest: str, trigger: str, scanner: str | None = None
    ) -> list[Task]:
        return [self.request(repo, d, trigger, scanner) for d in self.image_manifests(repo, digest)]

    def event(self, kind: str, repo: str, digest: str) -> None:
        """A push, preload or first proxy fetch (never raises)."""
        scan = self.settings.scan
        if kind not in scan.on or not self.settings.scanners:
            return
        from ..preheat.policy import matches_any

        try:
            if not matches_any(scan.repositories, repo):
                return
            self.scan_image(repo, digest, kind)
        except ScanFailed as exc:
            log.warning("scan of %s@%s on %s not started: %s", repo, digest, kind, exc)
        except Exception:
            log.exception("scan of %s@%s on %s not started", repo, digest, kind)

    # ---- running ---------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for scanner in self.settings.scanners.values():
                nursery.start_soon(self._metadata_loop, scanner)
            for _ in range(self.settings.scan.concurrency):
                nursery.start_soon(self._worker)
            if self.settings.scan.schedule:
                nursery.start_soon(self._schedule_loop)
            task_status.started()

    async def _worker(self) -> None:
        async for task in self._receive:
            task.started = self.clock()
            try:
                with trio.fail_after(self.settings.scan.timeout):
                    task.severity = await self._scan(task)
                self.on_result(task.scanner, "done")
            except trio.TooSlowError:
                task.error = f"the scan did not end in {self.settings.scan.timeout:g} s"
            except ScanFailed as exc:
                task.error = str(exc)
            except Exception as exc:  # a scanner's answer must not take the server down
                log.exception("scan of %s@%s failed", task.repo, task.digest)
                task.error = f"{type(exc).__name__}: {exc}"
            finally:
                self._tasks.pop((task.digest, task.scanner), None)
                task.done.set()
            if task.error:
                self.on_result(task.scanner, "failed")
                log.warning("scan of %s@%s by %s failed: %s", task.repo, task.digest,
                            task.scanner, task.error)  # fmt: skip
            else:
                log.info("scanned %s@%s with %s: %s", task.repo, task.digest, task.scanner,
                         task.severity or "no vulnerabilities")  # fmt: skip

    async def _scan(self, task: Task) -> str:
        config = self.settings.scanners[task.scanner]
        if self.app.store.resolve(task.repo, task.digest) is None:
            await self._fetch_manifest(task.repo, task.digest)
        record = self.app.store.index.manifest(task.digest)
        if record is None:
            raise ScanFailed(f"manifest {task.digest} is not in {task.repo}")
        token = self._pull_token(task.repo, task.digest)
        body = {
            "registry": {
                "url": config.registry_url or self.public_url,
                "authorization": f"Bearer {token}",
            },
            "artifact": {
                "repository": task.repo,
                "digest": task.digest,
                "mime_type": record["media_type"],
            },
        }
        async with self._client(config) as client:
            scan_id = await self._submit(client, config, body)
            try:
                data = await self._report(client, config, scan_id, HARBOR_REPORT)
            except _Lost:
                log.info("scanner %s lost scan %s; submitting it again", config.name, scan_id)
                scan_id = await self._submit(client, config, body)
                data = await self._report(client, config, scan_id, HARBOR_REPORT)
            reports = {HARBOR_REPORT: data}
            produced = self.metadata.get(config.name, {}).get("produces", [])
            if any(VULN_REPORT_11.split(";")[0] == p.split(";")[0] for p in produced):
                try:
                    reports[VULN_REPORT_11] = await self._report(
                        client, config, scan_id, VULN_REPORT_11
                    )
                except (ScanFailed, _Lost) as exc:
                    log.info("scanner %s: no %s report: %s", config.name, VULN_REPORT_11, exc)
            sbom = None
            sbom_types = self.metadata.get(config.name, {}).get("sbom_types") or []
            if sbom_types:  # a v1.2 adapter with the SBOM capability
                chosen = SPDX if SPDX in sbom_types else sbom_types[0]
                try:
                    sbom = await self._report(
                        client, config, scan_id, SBOM_REPORT, f"?sbom_media_type={quote(chosen)}"
                    )
                except (ScanFailed, _Lost) as exc:
                    log.info("scanner %s: no SBOM: %s", config.name, exc)
        try:
            parsed = await trio.to_thread.run_sync(parse_report, HARBOR_REPORT, data)
        except ValueError as exc:
            raise ScanFailed(f"scanner {config.name} sent an invalid report: {exc}") from None
        await self._store(task, config, reports, parsed)
        if sbom is not None:
            try:
                await self._store_sbom(task, config, sbom)
            except (ValueError, KeyError, TypeError, errors.OCIError) as exc:
                log.warning("the SBOM of %s@%s from %s was not stored: %s", task.repo,
                            task.digest, config.name, exc)  # fmt: skip
        return parsed.severity

    async def _fetch_manifest(self, repo: str, digest: str) -> None:
        """A platform manifest of a proxied index, which clients had not asked for yet."""
        target = resolve(self.app.config, repo, None)
        if not target.proxied:
            return
        from ..oci.names import Reference

        try:
            await self.app.proxy.manifest(
                target,
                self.app.upstream(target),
                Reference(digest=Digest.parse(digest)),
                head=False,
            )
        except errors.OCIError as exc:
            raise ScanFailed(f"manifest {digest} of {repo}: {exc.message}") from None

    async def resolve_image(self, image: str) -> tuple[str, str]:
        """`repo:tag` / `repo@digest` -> (repository, manifest digest), fetched if proxied."""
        from ..oci.names import Reference, validate_repository
        from ..preheat.config import split_image

        repo, ref = split_image(image)
        validate_repository(repo)
        reference = Reference.parse(ref)
        target = resolve(self.app.config, repo, None)
        if target.proxied:
            result = await self.app.proxy.manifest(
                target, self.app.upstream(target), reference, head=False
            )
            if result.info is None:
                raise errors.ManifestUnknown(f"{image}: not stored")
            return target.store_repo, str(result.info.digest)
        info = self.app.store.manifest(repo, ref)
        if info is None:
            raise errors.ManifestUnknown(f"{image} is not in this registry")
        return repo, str(info.digest)

    def _pull_token(self, repo: str, digest: str) -> str:
        issuer = self.app.auth.tokens
        assert issuer is not None
        return issuer.pull_token(SCANNER_SUBJECT, repo, self.settings.scan.timeout, [digest])

    def _client(self, config: ScannerConfig) -> httpx.AsyncClient:
        from ..upstream.session import service_client

        return service_client(config.ca_file, config.headers())

    async def _submit(self, client: httpx.AsyncClient, config: ScannerConfig, body: Any) -> str:
        delay = 1.0
        for attempt in range(4):
            try:
                response = await call_service(
                    client,
                    "POST",
                    f"{config.url}/api/v1/scan",
                    content=json.dumps(body).encode(),
                    headers={"Content-Type": SCAN_REQUEST, "Accept": SCAN_RESPONSE},
                )
            except httpx.HTTPError as exc:
                error = f"scanner {config.name} unreachable: {type(exc).__name__}"
                self.on_up(config.name, False)
            else:
                if response.status_code == 202:
                    try:
                        scan_id = jsontext.loads(response.content)["id"]  # type: ignore[index]
                    except (ValueError, KeyError, TypeError):
                        raise ScanFailed(f"scanner {config.name}: 202 without a scan id") from None
                    if not isinstance(scan_id, str) or not scan_id or len(scan_id) > 256:
                        raise ScanFailed(f"scanner {config.name}: a bad scan id")
                    return scan_id
                error = (
                    f"scanner {config.name} answered {response.status_code} to the scan "
                    f"request: {_error(response)}"
                )
                if response.status_code < 500 and response.status_code != 429:
                    raise ScanFailed(error)
            if attempt < 3:
                await trio.sleep(delay)
                delay *= 2
        raise ScanFailed(error)

    async def _report(
        self,
        client: httpx.AsyncClient,
        config: ScannerConfig,
        scan_id: str,
        media_type: str,
        query: str = "",
    ) -> bytes:
        url = f"{config.url}/api/v1/scan/{quote(scan_id, safe='')}/report{query}"
        wait = FIRST_POLL
        failures = 0
        while True:
            await trio.sleep(wait)
            try:
                response = await call_service(
                    client, "GET", url, headers={"Accept": media_type}, limit=MAX_REPORT,
                    deadline=REPORT_DEADLINE,
                )  # fmt: skip
            except httpx.HTTPError as exc:
                failures += 1
                self.on_up(config.name, False)
                if failures > 5:
                    raise ScanFailed(
                        f"scanner {config.name} unreachable: {type(exc).__name__}"
                    ) from None
                wait = min(MAX_POLL, 2.0**failures)
                continue
            status = response.status_code
            if status == 302:
                wait = _refresh_after(response)
                failures = 0
                continue
            if status == 404:
                raise _Lost(f"scanner {config.name} does not know scan {scan_id}")
            if status == 200:
                self.on_up(config.name, True)
                return response.content
            if status >= 500 or status == 429:
                failures += 1
                if failures > 5:
                    raise ScanFailed(f"scanner {config.name} answered {status}: {_error(response)}")
                wait = min(MAX_POLL, 2.0**failures)
                continue
            raise ScanFailed(
                f"scanner {config.name} answered {status} for the report: {_error(response)}"
            )

    async def _store(
        self, task: Task, config: ScannerConfig, reports: dict[str, bytes], parsed: Report
    ) -> None:
        """The reports as a referrer of the manifest, and the gate's record in the index."""
        record = self.app.store.index.manifest(task.digest)
        if record is None:
            raise ScanFailed(f"manifest {task.digest} was removed during its scan")
        blobs = {EMPTY_DIGEST: b"{}"}
        layers = []
        for media_type, data in reports.items():
            digest = str(Digest.of_bytes(data))
            blobs[digest] = data
            layers.append({"mediaType": media_type, "digest": digest, "size": len(data)})
        now = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
        artifact = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": REPORT_ARTIFACT,
            "config": {"mediaType": EMPTY, "digest": EMPTY_DIGEST, "size": 2},
            "layers": layers,
            "subject": {
                "mediaType": record["media_type"],
                "digest": task.digest,
                "size": int(record["size"]),
            },
            "annotations": {
                CREATED: now,
                SCANNER_ANNOTATION: config.name,
                SEVERITY_ANNOTATION: parsed.severity or "None",
            },
        }
        data = json.dumps(artifact, separators=(",", ":")).encode()
        manifest = parse_manifest(data, OCI_MANIFEST)
        await record_report(self.app, task.repo, task.digest, config.name, data, manifest, blobs)

    async def _store_sbom(self, task: Task, config: ScannerConfig, answer: bytes) -> None:
        """The SBOM (the adapter's HarborSbomReport's `sbom` document) as a referrer of the
        manifest whose artifactType is its format (application/spdx+json, CycloneDX)."""
        document = json.loads(answer)
        media_type = document["media_type"]
        if media_type not in SBOM_TYPES or not isinstance(document.get("sbom"), dict):
            raise ValueError(f"an SBOM report of type {str(media_type)[:80]!r}")
        sbom = json.dumps(document["sbom"], separators=(",", ":")).encode()
        record = self.app.store.index.manifest(task.digest)
        if record is None:
            raise ValueError(f"manifest {task.digest} was removed during its scan")
        digest = str(Digest.of_bytes(sbom))
        artifact = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": media_type,
            "config": {"mediaType": EMPTY, "digest": EMPTY_DIGEST, "size": 2},
            "layers": [{"mediaType": media_type, "digest": digest, "size": len(sbom)}],
            "subject": {
                "mediaType": record["media_type"],
                "digest": task.digest,
                "size": int(record["size"]),
            },
            "annotations": {
                CREATED: datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z"),
                SCANNER_ANNOTATION: config.name,
            },
        }
        data = json.dumps(artifact, separators=(",", ":")).encode()
        await store_artifact(
            self.app, task.repo, data, parse_manifest(data, OCI_MANIFEST),
            {EMPTY_DIGEST: b"{}", digest: sbom},
        )  # fmt: skip

    # ---- metadata, schedule ------------------------------------------------------------------

    async def _metadata_loop(self, config: ScannerConfig) -> None:
        while True:
            try:
                await self.check_metadata(config)
            except Exception:  # whatever an adapter answers, the server goes on
                log.exception("scanner %s: reading its metadata failed", config.name)
            await trio.sleep(config.metadata_interval)

    async def check_metadata(self, config: ScannerConfig) -> None:
        entry: dict[str, Any] = {"checked": self.clock()}
        try:
            async with self._client(config) as client:
                response = await call_service(
                    client, "GET", f"{config.url}/api/v1/metadata", headers={"Accept": METADATA}
                )
            if response.status_code != 200:
                raise ScanFailed(f"GET /api/v1/metadata: {response.status_code} {_error(response)}")
            value = jsontext.loads(response.content)
            if not isinstance(value, dict):
                raise ScanFailed("GET /api/v1/metadata: not a JSON object")
            scanner = value.get("scanner") or {}
            produces = [
                m
                for capability in value.get("capabilities") or []
                for m in capability.get("produces_mime_types") or []
                if isinstance(m, str)
            ]
            sbom_types = [
                t
                for capability in value.get("capabilities") or []
                if capability.get("type") == "sbom"
                for t in (capability.get("additional_attributes") or {}).get("sbom_media_types", [])
                if t in SBOM_TYPES
            ]
            entry |= {
                "sbom_types": sbom_types,
                "up": True,
                "name": str(scanner.get("name", ""))[:100],
                "vendor": str(scanner.get("vendor", ""))[:100],
                "version": str(scanner.get("version", ""))[:100],
                "produces": produces[:20],
                "error": "",
            }
        except (httpx.HTTPError, ValueError, AttributeError, TypeError, ScanFailed) as exc:
            reason = str(exc) if isinstance(exc, ScanFailed) else type(exc).__name__
            entry |= {"up": False, "error": reason[:300]}
            entry["produces"] = self.metadata.get(config.name, {}).get("produces", [])
        before = self.metadata.get(config.name, {}).get("up")
        self.metadata[config.name] = entry
        if before is not None and before != entry["up"]:
            log.warning("scanner %s is %s", config.name,
                        "up" if entry["up"] else f"down ({entry['error']})")  # fmt: skip
        self.on_up(config.name, bool(entry["up"]))

    async def _schedule_loop(self) -> None:
        from croniter import croniter

        schedule = croniter(
            self.settings.scan.schedule, datetime.datetime.fromtimestamp(self.clock())
        )
        while True:
            when = schedule.get_next(float)
            await trio.sleep(max(0.0, when - self.clock()))
            count = 0
            for digest, scanner, record in self.app.store.index.scans():
                if self.app.store.index.manifest(digest) is None:
                    continue
                # A scanner no longer configured: the default one rescans.
                which = scanner if scanner in self.settings.scanners else None
                try:
                    self.request(str(record.get("repo")), digest, "schedule", which)
                    count += 1
                except ScanFailed as exc:
                    log.warning("scheduled rescans stopped at %d: %s", count, exc)
                    break
                except Exception:
                    log.exception("scheduled rescan of %s failed", digest)
            log.info("scheduled rescan of %d manifests", count)

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "scanner": name,
                "url": config.url,
                "default": config is self.settings.default_scanner,
                "up": self.metadata.get(name, {}).get("up"),
                "adapter": " ".join(
                    str(self.metadata.get(name, {}).get(k, "")) for k in ("name", "version")
                ).strip(),
                "error": self.metadata.get(name, {}).get("error", ""),
                "running": sum(1 for (_, s), t in self._tasks.items() if s == name and t.started),
                "queued": sum(
                    1 for (_, s), t in self._tasks.items() if s == name and not t.started
                ),
            }
            for name, config in self.settings.scanners.items()
        ]


class _Lost(Exception):
    pass


def _refresh_after(response: httpx.Response) -> float:
    for header in ("refresh-after", "retry-after"):
        value = response.headers.get(header)
        if value is not None:
            try:
                return min(max(float(value), 0.1), MAX_POLL)
            except ValueError:
                break
    return FIRST_POLL


def _error(response: httpx.Response) -> str:
    """An adapter's error message, safe for a log line or a terminal."""
    try:
        text = str(jsontext.loads(response.content)["error"]["message"])  # type: ignore[index]
    except (ValueError, KeyError, TypeError):
        text = response.text
    return printable(text[:300])


def target_for(app: App, repo: str) -> Any:
    return resolve(app.config, repo, None)


async def record_report(
    app: App,
    repo: str,
    subject: str,
    scanner: str,
    artifact: bytes,
    manifest: Manifest,
    blobs: dict[str, bytes],
) -> Report:
    """Store a report artifact (its blobs, then its manifest: a referrer of `subject`) and the
    gate's record; the Harbor report it holds. Made here by a scan, or copied from a member of
    the site (scan/gate.py): ValueError when it holds no valid Harbor report."""
    harbor = next((d for d in manifest.blob_children if d.media_type == HARBOR_REPORT), None)
    if harbor is None or str(harbor.digest) not in blobs:
        raise ValueError("the report artifact has no Harbor report layer")
    if not SCANNER_NAME.fullmatch(scanner):
        scanner = "unknown"  # a name from another member's annotation: keys stay sound
    parsed = await trio.to_thread.run_sync(parse_report, HARBOR_REPORT, blobs[str(harbor.digest)])
    artifact_digest = await store_artifact(app, repo, artifact, manifest, blobs)
    record = {
        "repo": repo,
        "scanner": scanner,
        "severity": parsed.severity,
        "artifact": str(artifact_digest),
        "scanned": time.time(),
        "vulnerabilities": len(parsed.vulnerabilities),
    }
    await trio.to_thread.run_sync(app.store.index.put_scan, subject, scanner, record)
    return parsed


async def store_artifact(
    app: App, repo: str, artifact: bytes, manifest: Manifest, blobs: dict[str, bytes]
) -> Digest:
    """An artifact's blobs, then its manifest (a referrer of its subject), in `repo`."""
    store = app.store
    for digest, data in blobs.items():
        parsed_digest = Digest.parse(digest)
        if store.blob(repo, parsed_digest) is None:

            async def one(data: bytes = data) -> AsyncIterator[bytes]:
                yield data

            await store.put_blob_stream(repo, parsed_digest, one())
    artifact_digest = Digest.of_bytes(artifact)
    await store.put_manifest(repo, artifact, manifest, artifact_digest, None)
    return artifact_digest


def stored_report(
    app: App, repo: str, digest: str, scanner: str | None = None
) -> tuple[dict[str, Any], Report] | None:
    """The newest stored report of a manifest (the gate record and the parsed Harbor report).
    Only the index's scan records count: made by a scan here, copied from a member's records,
    or recorded by `edgecache preload`; never a report artifact that merely sits among the
    referrers (an upstream, or anyone who can push there, could put a clean one there)."""
    for name, record in app.store.index.scans_of(digest):
        if scanner is not None and name != scanner:
            continue
        if app.store.index.manifest(str(record.get("artifact"))) is None:
            continue
        report = _artifact_report(app, str(record["artifact"]))
        if report is not None:
            return record, report
    return None


def peer_reports(app: App, digest: str) -> list[dict[str, str]]:
    """What a member is told of a manifest's reports (GET /_edgecache/peer/reports/<digest>):
    this node's scan records only."""
    found = []
    for name, record in app.store.index.scans_of(digest)[:8]:
        artifact = str(record.get("artifact", ""))
        if app.store.index.manifest(artifact) is not None:
            found.append({"scanner": name, "repo": str(record.get("repo")), "artifact": artifact})
    return found


def record_imported_reports(app_store: Any, repo: str, digest: str) -> int:
    """Scan records for the report artifacts `edgecache preload` brought along with an image
    (the operator's archive: trusted as the operator's own), for it and its platform
    manifests; the number recorded."""
    from ..store.index import Index

    index: Index = app_store.index
    subjects = [digest]
    record = index.manifest(digest)
    if record is not None:
        subjects += list(record.get("manifests") or [])[:64]
    count = 0
    for subject in subjects:
        if index.scans_of(subject):
            continue
        for descriptor in app_store.referrers(repo, Digest.parse(subject)):
            if descriptor.get("artifactType") != REPORT_ARTIFACT:
                continue
            name = str((descriptor.get("annotations") or {}).get(SCANNER_ANNOTATION, ""))
            report = _read_artifact_report(app_store, str(descriptor.get("digest")))
            if report is None:
                continue
            entry = {"repo": repo, "scanner": name, "artifact": str(descriptor.get("digest")),
                     "severity": report.severity, "scanned": time.time(),
                     "vulnerabilities": len(report.vulnerabilities), "preloaded": True}  # fmt: skip
            index.put_scan(subject, name if SCANNER_NAME.fullmatch(name) else "unknown", entry)
            count += 1
            break
    return count


# Parsed reports by artifact digest (content-addressed: never stale); the gate asks often.
_PARSED: BoundedCache[str, Report] = BoundedCache(256)


def _artifact_report(app: App, artifact: str) -> Report | None:
    """The Harbor report inside a stored report artifact (None: unreadable or invalid)."""
    known = _PARSED.get(artifact)
    if known is not None:
        return known
    report = _read_artifact_report(app.store, artifact)
    if report is not None:
        _PARSED.put(artifact, report)
    return report


def _read_artifact_report(store: Any, artifact: str) -> Report | None:
    try:
        path = store.layout.blob_path(Digest.parse(artifact))
        document = json.loads(path.read_bytes())
        layer = next(layer for layer in document["layers"] if layer["mediaType"] == HARBOR_REPORT)
        data = store.layout.blob_path(Digest.parse(layer["digest"])).read_bytes()
        return parse_report(HARBOR_REPORT, data)
    except (OSError, ValueError, KeyError, TypeError, StopIteration, errors.OCIError):
        return None
