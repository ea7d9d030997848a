"""edgecache: a single-binary OCI registry cache for edge sites."""

__version__ = "0.1.0"
