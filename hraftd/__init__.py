"""hraftd: a distributed key-value store replicated with Raft (PySyncObj), served over HTTP."""

from hraftd.errors import HraftdError, OutcomeUnknownError, UnavailableError
from hraftd.store import LINEARIZABLE, STALE, ReplicatedKV

__version__ = "0.1.0"

__all__ = ["LINEARIZABLE", "STALE", "HraftdError", "OutcomeUnknownError", "ReplicatedKV", "UnavailableError",
           "__version__"]
