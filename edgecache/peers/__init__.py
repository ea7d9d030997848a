"""A site of edgecache nodes that act as one cache (the `[peers]` section).

- sign.py: how a node proves a request comes from a member (HMAC with the shared secret);
- ring.py: which member owns a digest (rendezvous hashing);
- site.py: the members as this node sees them, and the sources a miss asks in turn.
"""
