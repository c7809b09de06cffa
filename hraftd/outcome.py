"""The Raft layer's outcomes and the state machine's refusals, as hraftd's errors: each says whether anything
was applied."""

from __future__ import annotations

import threading
from typing import Any

from hraftd.errors import (
    HraftdError,
    InsufficientStorageError,
    LeaseNotFoundError,
    OutcomeUnknownError,
    PreconditionFailedError,
    StorageFailedError,
    TooManyLeasesError,
    UnavailableError,
)
from hraftd.raft import NotApplied, OutcomeUnknown, StorageError, StorageFull


def translate(error: Exception) -> HraftdError:
    if isinstance(error, HraftdError):
        return error
    if isinstance(error, StorageFull):
        return InsufficientStorageError(f"{error}; not applied")
    if isinstance(error, StorageError):
        return StorageFailedError(f"this node's storage failed ({error}); not applied, retry on another node")
    if isinstance(error, NotApplied):
        return UnavailableError(str(error))
    if isinstance(error, OutcomeUnknown):
        return OutcomeUnknownError(str(error))
    return OutcomeUnknownError(f"{error}; outcome unknown")


def refusal(result: Any) -> HraftdError | None:
    """The error for a result in which the state machine refused the command, or None."""
    if not isinstance(result, dict) or "error" not in result:
        return None
    if result["error"] == "precondition_failed":
        current = result["current_revision"]
        return PreconditionFailedError(f"the key's mod_revision is {current}"
                                       f"{' (absent)' if current == 0 else ''}, not the one the write expected; "
                                       "nothing was written", current)
    if result["error"] == "lease_not_found":
        return LeaseNotFoundError(f"lease {result['lease']} does not exist (never granted, revoked or expired); "
                                  "nothing was written")
    if result["error"] == "too_many_leases":
        return TooManyLeasesError(f"{result['max_leases']} leases are live, as many as this cluster allows "
                                  "(-max-leases); revoke one, or let one expire; no lease was granted")
    return HraftdError(f"{result['error']}: {result.get('message', '')}".rstrip(": "))


class Waiter:
    """Waits for another thread's ``done(result, error)``, up to a timeout."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.result: Any = None
        self.error: Exception | None = None

    def done(self, result: Any, error: Exception | None) -> None:
        self.result, self.error = result, error
        self._event.set()

    def wait(self, timeout: float) -> Any:
        """The result, or raise the error. The Raft node answers by its own deadline; the extra second here
        is only a safety net."""
        if not self._event.wait(timeout + 1.0):
            raise OutcomeUnknownError("no answer from the Raft node in time; outcome unknown")
        if self.error is not None:
            raise self.error
        return self.result
