"""[preheat] and [notifications] in the config file: what loads, and the message of each
mistake (the key, the value, what was expected)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecache.config import ConfigError, load

UPSTREAM = '[upstreams.up]\nurl = "http://127.0.0.1:9"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edgecache.toml"
    path.write_text(UPSTREAM + text)
    return path


def test_a_full_preheat_section_loads(tmp_path: Path) -> None:
    token = tmp_path / "pat"
    token.write_text("pat-123\n")
    config = load(
        write(
            tmp_path,
            f"""
[preheat.providers.df]
type = "dragonfly"
url = "http://127.0.0.1:8080"
token_file = "{token}"
scope = "all_peers"
scheduler_cluster_ids = [1, 2]

[preheat.providers.kr]
type = "kraken"
url = "http://127.0.0.1:8081"
check_url = "http://127.0.0.1:8082"

[[preheat.policies]]
name = "releases"
repositories = ["up/acme/**"]
tags = ["v*", "stable"]
platforms = ["linux/amd64", "linux/arm64/v8"]
providers = ["site", "df", "kr"]
on = ["push", "watch"]
schedule = "0 2 * * *"
watch = ["up/acme/app:stable"]
window = "22:00-06:00"
bandwidth = "20MB"

[[notifications.endpoints]]
name = "hook"
url = "http://127.0.0.1:9000/events"
""",
        ),
        env={},
    )
    policy = config.preheat.policies[0]
    assert policy.providers == ("site", "df", "kr")
    assert policy.bandwidth == 20_000_000 and str(policy.window) == "22:00-06:00"
    assert [str(p) for p in policy.selector.platforms] == ["linux/amd64", "linux/arm64/v8"]
    df = config.preheat.providers["df"]
    assert df.token == "pat-123" and df.scheduler_cluster_ids == (1, 2)
    assert "pat-123" not in repr(config)
    assert config.notifications[0].name == "hook"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[preheat.policies]]\nname = "a"\nseverity = "high"', "no [scanners.<name>]"),
        ('[[preheat.policies]]\nname = "a"\nseverity = "hgih"', "unknown severity 'hgih'"),
        ('[[preheat.policies]]\nname = "a"\ntags = ["{a,b"]', "preheat.policies[0].tags"),
        ('[[preheat.policies]]\nname = "a"\nproviders = ["df"]', "'df' is not a provider"),
        ('[[preheat.policies]]\nname = "a"\non = ["tuesday"]', "'tuesday'"),
        ('[[preheat.policies]]\nname = "a"\non = ["watch"]', "needs the tags to watch"),
        ('[[preheat.policies]]\nname = "a"\nwatch = ["team/app:v1"]', "repository of an upstream"),
        (
            '[[preheat.policies]]\nname = "a"\nwatch = ["up/app@sha256:' + "a" * 64 + '"]',
            "not a digest",
        ),
        ('[[preheat.policies]]\nname = "a"\nwindow = "25:00-01:00"', "HH:MM-HH:MM"),
        ('[[preheat.policies]]\nname = "a"\nbandwidth = "1KB"', "100000 to"),
        ('[[preheat.policies]]\nname = "a"\nschedule = "every day"', "cron"),
        ('[[preheat.policies]]\nname = "a"\nplatforms = ["linux"]', "platforms"),
        ('[[preheat.policies]]\nname = "a"\n[[preheat.policies]]\nname = "a"', "used twice"),
        ('[[preheat.policies]]\nname = "a b"', "expected a name"),
        ('[[preheat.policies]]\nname = "a"\nrepo = ["x"]', "preheat.policies[0].repo: unknown key"),
        ('[preheat.providers.df]\ntype = "spegel"', "expected one of site, dragonfly, kraken"),
        ('[preheat.providers.df]\ntype = "dragonfly"', "url: required"),
        ('[preheat.providers.df]\ntype = "dragonfly"\nurl = "http://x"', "token_file: required"),
        (
            '[preheat.providers.df]\ntype = "dragonfly"\nurl = "http://x"\ntoken_file = "/nope"',
            "cannot read it",
        ),
        (
            '[preheat.providers.kr]\ntype = "kraken"\nurl = "http://x"\ntoken_file = "/x"',
            "unknown key for a kraken provider",
        ),
        ("[preheat]\npolicy = []", "preheat.policy: unknown key"),
        ("[notifications]\nurl = 'http://x'", "[[notifications.endpoints]]"),
    ],
)
def test_each_mistake_names_its_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        load(write(tmp_path, text), env={})
    assert message in str(caught.value), str(caught.value)
