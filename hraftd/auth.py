"""Bearer-token authentication for the HTTP API: each token has a role, read < write < admin."""

from __future__ import annotations

import hmac
from pathlib import Path

ROLES = ("read", "write", "admin")


class TokenFile:
    """Tokens from a file of lines ``ROLE TOKEN`` (role: read, write or admin); ``#`` starts a comment."""

    def __init__(self, path: str | Path) -> None:
        self._tokens: list[tuple[bytes, str]] = []
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            role, _, token = line.partition(" ")
            token = token.strip()
            if role not in ROLES or not token or " " in token:
                raise ValueError(f"{path}, line {number}: expected 'ROLE TOKEN' with ROLE one of {', '.join(ROLES)}")
            self._tokens.append((token.encode(), role))
        if not self._tokens:
            raise ValueError(f"{path} names no token")

    def role_of_authorization(self, header: str) -> str | None:
        """The role of the bearer token in an ``Authorization`` header's value, or None."""
        scheme, _, token = header.partition(" ")
        return self.role_of(token.strip()) if scheme.lower() == "bearer" else None

    def role_of(self, token: str) -> str | None:
        """The role of ``token``, or None; compares against every token in constant time."""
        found = None
        for known, role in self._tokens:
            if hmac.compare_digest(known, token.encode()):
                found = role
        return found


def allows(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)
