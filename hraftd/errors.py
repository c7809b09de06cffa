"""The errors of the store. Each says whether the operation was applied, since callers must know."""

from __future__ import annotations


class HraftdError(Exception):
    """Base class. ``code`` is a stable machine-readable name, also used in HTTP error bodies."""

    code = "error"


class UnavailableError(HraftdError):
    """No leader or no quorum was reachable in time, or the leader refused. NOT applied; retry later."""

    code = "unavailable"


class OutcomeUnknownError(HraftdError):
    """The write was sent but not confirmed in time. It may still be applied, or never be."""

    code = "outcome_unknown"


class PreconditionFailedError(HraftdError):
    """A conditional write found the key at another revision: NOT applied. ``current_revision`` is the key's
    ``mod_revision`` when the write was applied to the log (0: the key was absent)."""

    code = "precondition_failed"

    def __init__(self, message: str, current_revision: int) -> None:
        super().__init__(message)
        self.current_revision = current_revision


class NotLeaderError(HraftdError):
    """A membership change must run on the leader; ``leader_http_addr`` says where that is (or None)."""

    code = "not_leader"

    def __init__(self, message: str, leader_http_addr: str | None) -> None:
        super().__init__(message)
        self.leader_http_addr = leader_http_addr


class LeaseNotFoundError(HraftdError):
    """No live lease has that id: never granted, revoked, expired, or expiring now. Nothing was written."""

    code = "lease_not_found"


class TooManyLeasesError(HraftdError):
    """As many leases are live as the cluster allows (``-max-leases``): no lease was granted."""

    code = "too_many_leases"


class UnknownMemberError(HraftdError):
    """No member has that id."""

    code = "unknown_member"


class MembershipConflictError(HraftdError):
    """The membership change is refused, e.g. removing the only member."""

    code = "membership_conflict"


class DataDirError(HraftdError):
    """The data directory belongs to another node or cannot be used."""

    code = "data_dir"


class WrongSecretError(HraftdError):
    """A node asked to join without proof that it holds the cluster secret."""

    code = "bad_secret"


class ClosedError(HraftdError):
    """The store was closed: it answers nothing any more."""

    code = "closed"


class StorageFailedError(UnavailableError):
    """This node's disk failed (a write or sync error): it stopped and reopens itself from disk. Not applied."""

    code = "storage_failed"


class InsufficientStorageError(HraftdError):
    """No space is left on this node's disk for the log: writes are refused until space is freed. Not applied."""

    code = "insufficient_storage"



class CompactedError(HraftdError):
    """A watch asked for events older than the node still keeps: ``oldest_revision`` is the oldest ``since`` it
    can answer. Read the keys again (a range gives their revision) and watch from there."""

    code = "compacted"

    def __init__(self, message: str, oldest_revision: int) -> None:
        super().__init__(message)
        self.oldest_revision = oldest_revision
