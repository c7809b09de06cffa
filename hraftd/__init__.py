"""hraftd: a distributed key-value store replicated with Raft (PySyncObj), served over HTTP.

The names below are loaded on first use (PEP 562), so that ``import hraftd.client`` loads neither the Raft
node nor the HTTP server: a program that only talks to a cluster needs none of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_MODULE_OF = {
    "LINEARIZABLE": "hraftd.store", "STALE": "hraftd.store", "ReplicatedKV": "hraftd.store",
    "HraftdError": "hraftd.errors", "OutcomeUnknownError": "hraftd.errors",
    "PreconditionFailedError": "hraftd.errors", "UnavailableError": "hraftd.errors",
}
__all__ = ["LINEARIZABLE", "STALE", "HraftdError", "OutcomeUnknownError", "PreconditionFailedError", "ReplicatedKV",
           "UnavailableError", "__version__"]

if TYPE_CHECKING:
    from hraftd.errors import HraftdError, OutcomeUnknownError, PreconditionFailedError, UnavailableError
    from hraftd.store import LINEARIZABLE, STALE, ReplicatedKV


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'hraftd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF})
