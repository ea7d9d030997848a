"""[scanners.*], [scan] and [[pull_policies]]: what loads, and each mistake's message."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecache.config import ConfigError, load
from tests.fakes.cosign import new_key


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edgecache.toml"
    path.write_text(text)
    return path


def test_scanners_scan_and_policies_load(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("s3cret-key\n")
    _, pem = new_key("ecdsa-p256")
    pub = tmp_path / "cosign.pub"
    pub.write_bytes(pem)
    config = load(
        write(
            tmp_path,
            f"""
[scanners.trivy]
url = "http://127.0.0.1:8080"
auth = "apikey"
secret_file = "{key}"

[scanners.grype]
url = "http://127.0.0.1:8081"
default = true

[scan]
on = ["push", "pull"]
schedule = "0 4 * * *"

[[pull_policies]]
repositories = ["team/**"]
block_severity = "high"
allowlist = ["CVE-2024-1", {{ id = "CVE-2024-2", expires = "2027-01-31" }}]
unscanned = "wait"
wait = 5
on_scanner_down = "deny"
require_signature = true
public_keys = ["{pub}"]
""",
        ),
        env={},
    )
    scan = config.scan
    assert scan.default_scanner is not None and scan.default_scanner.name == "grype"
    assert scan.scanners["trivy"].headers() == {"X-ScannerAdapter-API-Key": "s3cret-key"}
    assert "s3cret-key" not in repr(config)
    policy = scan.policy_for("team/app")
    assert policy is not None and policy.block_severity == "High"
    assert [e.cve for e in policy.allowlist] == ["CVE-2024-1", "CVE-2024-2"]
    assert scan.policy_for("other/app") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[scanners.a]\nurl = "ftp://x"', "http:// or https://"),
        ("[scanners.a]\nauth = 'none'", "scanners.a.url: required"),
        ('[scanners.a]\nurl = "http://x"\nauth = "token"', "expected one of none, basic"),
        ('[scanners.a]\nurl = "http://x"\nauth = "bearer"', "secret_file: required"),
        (
            '[scanners.a]\nurl = "http://x"\nauth = "bearer"\nsecret_file = "/nope"',
            "cannot read it",
        ),
        ('[scanners.a]\nurl = "http://x"\nusername = "u"', "only with auth = 'basic'"),
        (
            '[scanners.a]\nurl = "http://x"\ndefault = true\n[scanners.b]\nurl = "http://y"\n'
            "default = true",
            "both default = true",
        ),
        ('[scanners.a]\nurl = "http://x"\nkey = 1', "scanners.a.key: unknown key"),
        ('[scan]\non = ["push"]', "no [scanners.<name>] is configured"),
        ('[scanners.a]\nurl = "http://x"\n[scan]\non = ["delete"]', "'delete'"),
        ('[scanners.a]\nurl = "http://x"\n[scan]\ntimeout = 0', "expected 1 to 86400"),
        ('[[pull_policies]]\nblock_severity = "High"', "need a scanner"),
        (
            '[scanners.a]\nurl = "http://x"\n[[pull_policies]]\nblock_severity = "hgih"',
            "unknown severity 'hgih'",
        ),
        (
            '[scanners.a]\nurl = "http://x"\n[[pull_policies]]\nunscanned = "maybe"',
            "expected one of allow, wait, deny",
        ),
        ('[[pull_policies]]\nallowlist = ["CVE-1, CVE-2"]', "pull_policies[0].allowlist"),
        (
            '[[pull_policies]]\nrequire_signature = true\npublic_keys = ["/nope.pub"]',
            "expected a PEM file",
        ),
        ('[[pull_policies]]\nrepositories = ["{a"]', "pull_policies[0].repositories"),
        ("[[pull_policies]]\nblock = 1", "pull_policies[0].block: unknown key"),
    ],
)
def test_each_mistake_names_its_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text), env={})
    assert message in str(caught.value), str(caught.value)


def test_a_public_key_that_is_not_one_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    text = f'[[pull_policies]]\nrequire_signature = true\npublic_keys = ["{bad}"]'
    with pytest.raises(ConfigError, match="public_keys"):
        load(write(tmp_path, text), env={})
