"""BoundedCache: never more than its bound, entries gone after their TTL."""

from edgecache.bounded import BoundedCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_holds_at_most_its_bound_dropping_the_least_recently_used() -> None:
    cache: BoundedCache[int, str] = BoundedCache(3)
    for n in range(3):
        cache.put(n, str(n))
    assert cache.get(0) == "0"  # 0 is now the most recently used
    cache.put(3, "3")
    assert len(cache) == 3
    assert cache.get(1) is None
    assert [cache.get(n) for n in (0, 2, 3)] == ["0", "2", "3"]
    for n in range(100_000):
        cache.put(n, "x")
    assert len(cache) == 3


def test_entries_expire_and_a_lookup_may_ask_for_a_shorter_ttl() -> None:
    clock = Clock()
    cache: BoundedCache[str, list[str]] = BoundedCache(10, ttl=60.0, clock=clock)
    cache.put("a", [])
    clock.now = 30.0
    assert cache.get("a") == []  # an empty value is still a hit
    assert cache.get("a", ttl=10.0) is None  # and a shorter TTL drops it
    cache.put("b", ["x"])
    assert cache.age("b") == 0.0
    clock.now = 90.0
    assert "b" not in cache
    assert len(cache) == 0
