"""The content store: the only code that touches the data directory.

Layout of a data directory (this docstring is the one place it is written down)::

    <data>/index/                 LMDB environment (data.mdb, lock.mdb): the graph, see below
    <data>/blobs/sha256/ab/abcd…  one read-only file per blob *or manifest*, named by its digest
    <data>/uploads/<uuid>         bytes of a client upload session (chunked pushes); the session
                                  record lives in LMDB, so an upload survives a restart; idle
                                  sessions expire (store/uploads.py)
    <data>/tmp/                   downloads and monolithic uploads in progress; emptied at start
    <data>/trash/                 files of a garbage-collection batch whose transaction has not
                                  committed yet; at start-up put back if the index still
                                  names them, else deleted
    <data>/quarantine/sha256/abcd…  a file the scrub found corrupt (store/scrub.py), moved out
                                  of blobs/ and never read again; abcd….json beside it says
                                  what was wrong and which repositories linked it. Delete at will
    <data>/run/server.json        address and pid of the running server (removed at clean stop)
    <data>/run/admin-token        admin API bearer token, mode 0600, new at every start
    <data>/run/lock               flock held by the running server (or fsck --repair) for its
                                  lifetime; holds the holder's pid (store/lock.py)
    <data>/run/owner.sock         Unix socket (0600) of the process that owns fetches, pushes
                                  and the admin API, for the other serving processes
    <data>/run/worker-N.sock      Unix socket (0600) of worker N (server/workers.py); the
                                  owner reads its /metrics there. Both kinds while serving

LMDB named databases (keys are UTF-8; values are compact JSON)::

    blobs      <digest>                    {"size", "created", "pinned", "ref", "gen"}
    manifests  <digest>                    {"media_type", "size", "blobs": [...],
                                            "manifests": [...], "subject", "artifact_type"}
    tags       <repo>\\0<tag>               {"digest", "updated"}
    links      <repo>\\0<digest>            {"kind": "blob" | "manifest"}
    referrers  <repo>\\0<subject>\\0<h>      referrer descriptor (mediaType, size, artifactType…,
                                            digest); <h> = sha256 hex of the referrer's digest
                                            (older data: the digest itself; store/keys.py)
    repos      <repo>                      {"created"}
    uploads    <uuid>                      {"repo", "client", "started", "active"}
    meta       "store_bytes"               total bytes of all files under blobs/
               "gen"                       counter bumped by every transaction that links or
                                           references content ("gen" on blob records): GC
                                           spares what was referenced after its snapshot
               "scrub_cursor"              last digest the scrub pass in progress verified
               "scrub_last_pass"           when the last full scrub pass ended
               "scrub_since"               when the scrub first ran here (first pass due from)
               "scan_gen", "policy_gen"    counters bumped when a report or an admin pull
                                           policy is stored: every serving process drops its
                                           cached gate decisions / reloads its policies
    access     <repo>\0<digest>            last time the manifest was pulled (batched writes)
    gcruns     <start time>                record of a GC run (what was freed or skipped)
    preheat    job/<id>                    a preheat job's record (edgecache/preheat/jobs.py);
                                           ids sort by creation, the newest jobs_kept stay
               policy/<name>               a policy set through the admin API
               event/<id>                  an event `edgecache preload` recorded for the
                                           server's preheat triggers (removed once handled)
    scans      <digest>\0<scanner>         the pull gate's record of a stored vulnerability
                                           report (scan/service.py): {"repo", "scanner",
                                           "severity", "artifact" (the report's referrer
                                           manifest), "scanned", "vulnerabilities"}
    policies   <name>                      a pull policy set through the admin API (its table)

Visibility rule: bytes go to tmp/ (or uploads/), the digest is verified, the file is fsynced
and renamed into blobs/ (over any file already there: a verified copy replaces a damaged
one), and only then does the LMDB transaction record it; if that transaction fails, a file
the rename created is removed again (keys are checked against LMDB's limit before anything is
written). A crash at any point leaves the old state or the new one; a file in blobs/ without
an index entry is invisible (fsck reports it, `fsck --repair` removes it). A repository
sees only content that is linked to it.
"""

from .store import BlobInfo, ManifestInfo, Store, TagInfo

__all__ = ["BlobInfo", "ManifestInfo", "Store", "TagInfo"]
