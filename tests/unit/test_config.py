import re
from pathlib import Path

import pytest

from edgecache.config import ConfigError, load, parse_hostport

REFERENCE = Path(__file__).parents[2] / "config" / "edgecache.toml"


def test_embedded_defaults_need_no_file() -> None:
    config = load(env={})
    assert config.server.listen == "0.0.0.0:5000"
    assert config.server.data == "./edgecache-data"
    assert config.auth.anonymous_pull is True
    assert config.auth.anonymous_push is False
    assert config.server.alpn == ("http/1.1", "h2")


def test_reference_file_equals_the_embedded_defaults() -> None:
    assert load(REFERENCE, env={}) == load(env={})


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nlisten = "127.0.0.1:6000"\ndata = "/srv/a"\n')
    config = load(
        path,
        env={"EDGECACHE_SERVER_DATA": "/srv/b", "EDGECACHE_AUTH_ANONYMOUS_PUSH": "yes"},
        overrides={"server": {"listen": "127.0.0.1:7000"}},
    )
    assert config.server.listen == "127.0.0.1:7000"
    assert config.server.data == "/srv/b"
    assert config.auth.anonymous_push is True


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[server]\nlisten = "nowhere"\n', "server.listen = 'nowhere': expected HOST:PORT"),
        ('[server]\nlisten = "a:99999"\n', "expected HOST:PORT"),
        ("[server]\nsendfile = 1\n", "server.sendfile = 1: expected true or false"),
        ("[server]\nlsiten = 'x'\n", "server.lsiten: unknown key"),
        ("[srever]\n", "[srever]: unknown section"),
        ('[server]\nalpn = ["h3"]\n', "server.alpn = ['h3']"),
        ('[server]\nlog_level = "loud"\n', "server.log_level = 'loud'"),
        ('[server]\ntls_cert = "/nonexistent.pem"\n', "expected both or neither"),
        ("[limits]\nmax_manifest_size = -1\n", "expected a positive size in bytes"),
        ("[server]\nidle_timeout = 0\n", "server.idle_timeout = 0: expected more than 0"),
        ('[auth.users]\nalice = "plain"\n', "auth.users.alice = <hidden>: expected a bcrypt hash"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_invalid_file_is_refused_with_key_value_and_expectation(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert fragment in str(info.value)


def test_plain_password_is_never_echoed(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[auth.users]\nalice = "hunter2"\n')
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"EDGECACHE_AUTH_ANONYMOUS_PUSH": "maybe"}, "EDGECACHE_AUTH_ANONYMOUS_PUSH = 'maybe'"),
        ({"EDGECACHE_SERVER_LISTN": "x"}, "EDGECACHE_SERVER_LISTN: unknown setting"),
        ({"EDGECACHE_LIMITS_MAX_MANIFEST_SIZE": "big"}, "expected a positive size in bytes"),
    ],
)
def test_invalid_environment_is_refused(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(env=env)
    assert fragment in str(info.value)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path / "absent.toml", env={})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0.0.0.0:5000", ("0.0.0.0", 5000)), ("[::1]:80", ("::1", 80)), (":5000", ("0.0.0.0", 5000))],
)
def test_parse_hostport(value: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(value) == expected


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("10G", 10 * 10**9),  # SI units are powers of 1000, as disk sizes are sold
        ("10g", 10 * 10**9),
        ("1.5GB", 1_500_000_000),
        ("512MiB", 512 * 2**20),  # IEC units are powers of 1024
        ("64 KiB", 65536),
        ("2TiB", 2 * 2**40),
        ("123", 123),
        ("0", 0),
    ],
)
def test_byte_sizes_take_units(tmp_path: Path, value: object, size: int) -> None:
    path = tmp_path / "c.toml"
    shown = f'"{value}"' if isinstance(value, str) else value
    path.write_text(f"[eviction]\nmax_store_bytes = {shown}\nmin_free_bytes = {shown}\n")
    config = load(path, env={})
    assert config.eviction.max_store_bytes == config.eviction.min_free_bytes == size
    env = {"EDGECACHE_EVICTION_MAX_STORE_BYTES": str(value)}
    assert load(env=env).eviction.max_store_bytes == size
    if size:
        text = f"[limits]\nmax_manifest_size = {shown}\n"
        path.write_text(text)
        assert load(path, env={}).limits.max_manifest_size == size


@pytest.mark.parametrize("value", ['"10 gigs"', '"1e9"', '"-5M"', "true", "1.5", '"G"'])
def test_a_size_that_is_not_one_is_refused_with_the_units_explained(
    tmp_path: Path, value: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[eviction]\nmax_store_bytes = {value}\n")
    with pytest.raises(ConfigError, match=r"max_store_bytes = .*KiB, MiB, GiB, TiB of 1024"):
        load(path, env={})


def test_unknown_section_lists_every_section(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[upstream."docker.io"]\nurl = "https://registry-1.docker.io"\n')
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    message = str(info.value)
    assert message.startswith("[upstream]: unknown section (expected one of server, ")
    for section in ("auth", "limits", "proxy", "gc", "eviction", "upstreams"):
        assert f" {section}," in message or f" {section})" in message
    assert message.endswith("did you mean [upstreams]?")
    path.write_text('listen = "127.0.0.1:5000"\n')
    with pytest.raises(
        ConfigError, match=r"a key outside any section; it belongs under \[server\]"
    ):
        load(path, env={})
    with pytest.raises(ConfigError, match="SECTION one of SERVER, AUTH, LIMITS, PROXY, GC"):
        load(env={"EDGECACHE_SEVRER_LISTEN": "x"})


def test_access_log_cannot_be_empty(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\naccess_log = ""\n')
    with pytest.raises(ConfigError, match=r"server\.access_log = '': expected"):
        load(path, env={})


def _peers(tmp_path: Path, body: str, secret: bytes | None = b"0123456789abcdef\n") -> Path:
    if secret is not None:
        (tmp_path / "secret").write_bytes(secret)
    path = tmp_path / "c.toml"
    path.write_text("[peers]\n" + body.replace("SECRET", str(tmp_path / "secret")))
    return path


def test_peers_are_read_with_the_secret(tmp_path: Path) -> None:
    path = _peers(
        tmp_path,
        'members = ["http://10.0.0.1:5000/", "http://10.0.0.2:5000"]\n'
        'self = "http://10.0.0.1:5000"\nsecret_file = "SECRET"\n',
    )
    peers = load(path, env={}).peers
    assert peers.enabled
    assert peers.members == ("http://10.0.0.1:5000", "http://10.0.0.2:5000")
    assert peers.self_url == "http://10.0.0.1:5000"
    assert peers.secret == b"0123456789abcdef"
    assert "0123456789abcdef" not in repr(peers)
    env = {"EDGECACHE_PEERS_SELF": "http://10.0.0.2:5000"}
    assert load(path, env=env).peers.self_url == "http://10.0.0.2:5000"
    assert not load(env={}).peers.enabled


@pytest.mark.parametrize(
    ("body", "secret", "fragment"),
    [
        ('members = ["http://a:1"]\nsecret_file = "SECRET"\n', b"x" * 16, "peers.self: expected"),
        (
            'members = ["http://a:1"]\nself = "http://b:1"\nsecret_file = "SECRET"\n',
            b"x" * 16,
            "expected one of peers.members",
        ),
        ('members = ["http://a:1"]\nself = "http://a:1"\n', None, "peers.secret_file: expected"),
        (
            'members = ["http://a:1"]\nself = "http://a:1"\nsecret_file = "SECRET"\n',
            b"short\n",
            "has 5 bytes; expected at least 16",
        ),
        (
            'members = ["http://a:1"]\nself = "http://a:1"\nsecret_file = "SECRET"\n',
            None,
            "cannot read it",
        ),
        ('members = ["a:1"]\n', None, "an http:// or https:// URL"),
        ('members = ["http://a:1/v2"]\n', None, "with no path"),
        ('self = "http://a:1"\n', None, "peers.members and peers.dns are empty"),
        ('dns = "peers"\nsecret_file = "SECRET"\n', b"x" * 16, "expected HOST:PORT"),
        ('dns = ":5000"\nsecret_file = "SECRET"\n', b"x" * 16, "expected NAME:PORT"),
    ],
)
def test_bad_peers_are_refused_with_what_to_do(
    tmp_path: Path, body: str, secret: bytes | None, fragment: str
) -> None:
    path = _peers(tmp_path, body, secret)
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load(path, env={})


def test_peers_by_dns_need_no_members_or_self(tmp_path: Path) -> None:
    path = _peers(tmp_path, 'dns = "edgecache-peers.edge.svc:5000"\nsecret_file = "SECRET"\n')
    peers = load(path, env={}).peers
    assert peers.enabled and peers.dns == "edgecache-peers.edge.svc:5000"
    assert peers.members == () and peers.self_url == ""
