"""htpasswd files: bcrypt lines only, every refusal naming the line and never the hash."""

from pathlib import Path

import bcrypt
import pytest

from edgecache.config import ConfigError, load

HASH = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$")


def config_with(tmp_path: Path, htpasswd: str, users: str = "") -> Path:
    (tmp_path / "htpasswd").write_text(htpasswd)
    path = tmp_path / "c.toml"
    path.write_text(f'[auth]\nhtpasswd_file = "{tmp_path / "htpasswd"}"\n{users}')
    return path


def test_users_come_from_the_file_and_the_toml(tmp_path: Path) -> None:
    other = bcrypt.hashpw(b"pw2", bcrypt.gensalt(rounds=4)).decode()
    path = config_with(tmp_path, f"# team\n\nalice:{HASH}\n", f'\n[auth.users]\nbob = "{other}"\n')
    assert dict(load(path, env={}).auth.users) == {"alice": HASH, "bob": other}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("alice:$apr1$abcdefgh$0123456789abcdefghijkl\n", "line 1: the hash of user 'alice'"),
        (f"alice:{HASH}\nbob:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n", "line 2"),
        (f"alice:{HASH}\nnot a user line\n", "line 2: expected user:bcrypt-hash"),
        (f"alice:{HASH}\nalice:{HASH}\n", "line 2: user 'alice' is already on line 1"),
    ],
)
def test_bad_lines_are_refused_by_number(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(config_with(tmp_path, text), env={})
    assert fragment in str(info.value)
    assert "$apr1$" not in str(info.value) and HASH not in str(info.value)


def test_a_user_in_both_places_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    path = config_with(tmp_path, f"alice:{HASH}\n", f'\n[auth.users]\nalice = "{HASH}"\n')
    with pytest.raises(ConfigError, match=r"'alice' is also in \[auth\.users\]"):
        load(path, env={})
    with pytest.raises(ConfigError, match="cannot read it"):
        load(env={"EDGECACHE_AUTH_HTPASSWD_FILE": str(tmp_path / "missing")})
