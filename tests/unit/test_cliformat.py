"""`edgecache status` for people: dates, sizes and words, never epochs, reprs of dicts or lists."""

import re

from edgecache import cliformat

SCRUB = {
    "scrub": {
        "rate_bytes_per_second": 16 << 20,
        "bytes_verified": 109_905,
        "last_full_pass": 1_796_044_394.08,
        "quarantined": [
            {
                "digest": "sha256:" + "ab" * 32,
                "size": 100_000,
                "found": 1_796_044_394.0,
                "repositories": {"u/app": "pushed", "lab/x": "proxied"},
            }
        ],
        "awaiting_repush": ["sha256:" + "ab" * 32],
    }
}


def test_scrub_status_has_no_epochs_dicts_or_lists() -> None:
    text = "\n".join(cliformat.fields(SCRUB))
    assert "rate" in text and "16.0 MiB/s" in text
    assert "107.3 KiB (109,905 bytes)" in text
    assert "97.7 KiB (100,000 bytes)" in text
    assert "u/app (pushed), lab/x (proxied)" in text
    assert "1.79" not in text and "1796044394" not in text  # no epoch seconds
    assert not re.search(r"[{}\[\]']", text), text  # no dict or list reprs
    assert len(re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", text)) == 2
