"""Users from an htpasswd file ([auth] htpasswd_file), the format `htpasswd -B` writes.

Only bcrypt lines (`user:$2y$...`, also $2a$ and $2b$) are accepted: htpasswd's other formats
(MD5 `$apr1$`, SHA1 `{SHA}`, crypt) are weak or unsalted, and a line that silently did not
work would lock its user out. A refusal names the file and the line number, never the hash.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .config import ConfigError

_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
_BCRYPT_LENGTH = 60  # "$2b$" + 2-digit cost + "$" + 53 characters of salt and hash


def read_htpasswd(path: str) -> dict[str, str]:
    """user -> bcrypt hash, from an htpasswd file; ConfigError for any line that is not one."""
    where = f"auth.htpasswd_file = {path!r}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not a text file") from None
    users: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        user = user.strip()
        if not sep or not user:
            raise ConfigError(f"{where}: line {number}: expected user:bcrypt-hash")
        hashed = hashed.strip()
        if not hashed.startswith(_BCRYPT_PREFIXES) or len(hashed) != _BCRYPT_LENGTH:
            raise ConfigError(
                f"{where}: line {number}: the hash of user {user!r} is not bcrypt; only "
                "bcrypt lines are accepted (make them with `htpasswd -B`)"
            )
        if user in users:
            raise ConfigError(
                f"{where}: line {number}: user {user!r} is already on line {first_line[user]}"
            )
        users[user] = hashed
        first_line[user] = number
    return users


def merge_users(path: str, toml_users: Mapping[str, str]) -> dict[str, str]:
    """[auth.users] plus the htpasswd file's users; a name in both is a mistake, refused."""
    from_file = read_htpasswd(path)
    both = sorted(set(from_file) & set(toml_users))
    if both:
        raise ConfigError(
            f"auth.htpasswd_file = {path!r}: user {both[0]!r} is also in [auth.users]; "
            "keep each user in one place"
        )
    return {**toml_users, **from_file}
