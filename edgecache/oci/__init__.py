"""Sans-IO knowledge of the OCI distribution and image specs.

Digests, repository names and tags, media types, manifest parsing, /v2 routing, byte ranges,
pagination and the OCI error model live here as plain functions and frozen dataclasses. Nothing
in this package performs I/O or imports trio, so every rule is unit-tested without sockets and
reused unchanged by the server, the cache, the CLI and the tarball loaders.

Import the submodules directly (``from edgecache.oci.digest import Digest``); this package
re-exports nothing so that importing one piece never drags in the others.
"""
