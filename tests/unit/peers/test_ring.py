import hashlib

from edgecache.peers.ring import above, order


def digests(n: int) -> list[str]:
    return ["sha256:" + hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]


def test_every_node_computes_the_same_order_whatever_the_list_order() -> None:
    members = [f"http://10.0.0.{i}:5000" for i in range(1, 6)]
    for d in digests(50):
        assert order(members, d) == order(list(reversed(members)), d)
        assert sorted(order(members, d)) == sorted(members)


def test_above_is_the_part_of_the_order_before_me() -> None:
    members = [f"http://10.0.0.{i}:5000" for i in range(1, 5)]
    for d in digests(50):
        ranked = order(members, d)
        for i, me in enumerate(ranked):
            assert above(members, me, d) == ranked[:i]


def test_a_joining_member_takes_about_its_share_and_moves_nothing_else() -> None:
    members = [f"http://10.0.0.{i}:5000" for i in range(1, 4)]
    joined = [*members, "http://10.0.0.4:5000"]
    keys = digests(4000)
    moved = [d for d in keys if order(members, d)[0] != order(joined, d)[0]]
    # Only to the new member, and about a quarter of the keys (binomial: 1000 +- 3 sigma).
    assert all(order(joined, d)[0] == "http://10.0.0.4:5000" for d in moved)
    assert 900 <= len(moved) <= 1100


def test_load_is_spread_evenly() -> None:
    members = [f"http://10.0.0.{i}:5000" for i in range(1, 11)]
    counts = dict.fromkeys(members, 0)
    for d in digests(10_000):
        counts[order(members, d)[0]] += 1
    assert max(counts.values()) < 1.15 * 1000
    assert min(counts.values()) > 0.85 * 1000
