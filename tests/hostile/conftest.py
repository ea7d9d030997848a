"""Hostile-input tests: real edgecache processes and real upstreams, driven the way an
attacker or a broken peer would (raw sockets, lying upstreams, stalled clients)."""
