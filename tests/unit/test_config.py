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
        ("[limits]\nmax_manifest_size = -1\n", "expected a positive integer"),
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
        ({"EDGECACHE_LIMITS_MAX_MANIFEST_SIZE": "big"}, "expected a positive integer"),
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
