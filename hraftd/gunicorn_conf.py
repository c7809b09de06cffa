"""gunicorn's settings for a node: ``gunicorn -c python:hraftd.gunicorn_conf -b HOST:PORT``.

The node itself takes its settings from HRAFTD_* variables (docs/operations.md). This module chooses the app
and hraftd's worker class, so that neither is typed on the command line; options given on the command line
override it, and the node refuses those it cannot run with (several workers, --preload, another worker class).
``hraftd`` embeds gunicorn with the same settings.
"""

from __future__ import annotations

import os
from typing import Any


def gunicorn_settings(join_timeout: float) -> dict[str, Any]:
    return {
        "wsgi_app": "hraftd.server:create_app()",
        "worker_class": "hraftd.worker.NodeWorker",
        "workers": 1,  # a node is one Raft member: one process
        "threads": 16,  # the pool for the requests that are not /key
        "worker_connections": 10000,  # open connections; past it the longest idle is closed, or 503 busy
        "keepalive": 60,  # seconds a connection may stay idle between requests
        "timeout": int(join_timeout) + 30,  # the worker sends no heartbeat while it joins
        "graceful_timeout": 10,
        "control_socket_disable": True,  # else every node of one user would share $HOME/.gunicorn/gunicorn.ctl
        "limit_request_line": 8190,  # gunicorn's maximum: room for the longest key, percent-encoded
    }


globals().update(gunicorn_settings(float(os.environ.get("HRAFTD_JOIN_TIMEOUT") or 30)))
