"""Bearer-token authentication for the HTTP API: each token has a role, read < write < admin.

A token is taken whole from its line: nothing inside a token line is a comment, so a ``#`` in a token is part
of it. A token shorter than ``MIN_TOKEN_LENGTH`` is refused when the file is read, before the node serves.
"""

from __future__ import annotations

import hmac
from pathlib import Path

ROLES = ("read", "write", "admin")
MIN_TOKEN_LENGTH = 16


class TokenFile:
    """Tokens from a file of lines ``ROLE TOKEN`` (role: read, write or admin); a line whose first character
    that is not blank is ``#`` is a comment, and blank lines are skipped."""

    def __init__(self, path: str | Path) -> None:
        self._tokens: list[tuple[bytes, str]] = []
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            where = f"{path}, line {number}"
            if len(fields) != 2 or fields[0] not in ROLES:
                raise ValueError(f"{where}: expected 'ROLE TOKEN' with ROLE one of {', '.join(ROLES)} and a token "
                                 "without spaces (comments go on lines of their own)")
            role, token = fields
            if len(token) < MIN_TOKEN_LENGTH:
                raise ValueError(f"{where}: the {role} token has {len(token)} characters; tokens need at least "
                                 f"{MIN_TOKEN_LENGTH} (make one with: python -c 'import secrets; "
                                 "print(secrets.token_urlsafe(32))')")
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
        presented = token.encode("utf-8", "surrogateescape")
        for known, role in self._tokens:
            if hmac.compare_digest(known, presented):
                found = role
        return found


def allows(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)
