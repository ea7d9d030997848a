"""Client authentication: HTTP Basic against bcrypt hashes from the config."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

import bcrypt
import trio

from ..config import AuthConfig
from ..oci import errors

# Methods that change the registry; everything else is a pull.
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        # bcrypt is deliberately slow (~0.2 s): remember credentials that verified, keyed by a
        # salted digest so that the plain password is never kept in memory.
        self._salt = hashlib.sha256(str(id(self)).encode()).digest()
        self._verified: set[bytes] = set()

    def _challenge(self, message: str) -> errors.Unauthorized:
        error = errors.Unauthorized(message)
        error.headers["WWW-Authenticate"] = f'Basic realm="{self.config.realm}"'
        return error

    async def check(
        self, method: str, authorization: str | None, *, base: bool = False
    ) -> str | None:
        """The authenticated user (None for anonymous access that is allowed), or raise 401.

        `base` is GET /v2/: clients (skopeo, docker) learn from its challenge whether to send
        credentials at all, so it challenges anonymous callers whenever some operation needs
        credentials, even though anonymous pulls of content may be allowed.
        """
        write = method in WRITE_METHODS
        anonymous_ok = self.config.anonymous_push if write else self.config.anonymous_pull
        if base:
            anonymous_ok = self.config.anonymous_pull and (
                self.config.anonymous_push or not self.config.users
            )
        if authorization is not None and _is_empty_basic(authorization):
            # containers/image sends "Basic Og==" (empty user:password) when it has no
            # credentials for a Basic challenge: that is an anonymous request.
            authorization = None
        if authorization is None:
            if anonymous_ok:
                return None
            action = "push and delete" if write or base else "pull"
            raise self._challenge(f"authentication required to {action}")
        user, password = self._parse(authorization)
        if not await self._verify(user, password):
            raise self._challenge("invalid username or password")
        return user

    def _parse(self, header: str) -> tuple[str, str]:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "basic" or not token.strip():
            raise self._challenge("Authorization header must use the Basic scheme")
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise self._challenge(
                "Authorization header is not valid base64 user:password"
            ) from None
        user, sep, password = decoded.partition(":")
        if not sep or not user:
            raise self._challenge("Authorization header must encode user:password")
        return user, password

    async def _verify(self, user: str, password: str) -> bool:
        hashed = self.config.users.get(user)
        if hashed is None:
            return False
        key = hmac.new(self._salt, f"{user}\0{password}\0{hashed}".encode(), "sha256").digest()
        if key in self._verified:
            return True
        ok = await trio.to_thread.run_sync(bcrypt.checkpw, password.encode(), hashed.encode())
        if ok:
            self._verified.add(key)
        return ok


def _is_empty_basic(header: str) -> bool:
    scheme, _, token = header.strip().partition(" ")
    return scheme.lower() == "basic" and token.strip() in ("Og==", "Og")
