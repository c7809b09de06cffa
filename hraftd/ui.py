"""The status page at ``/ui``: the cluster at a glance, in a browser.

``GET /ui`` serves one static page (``ui.html``: HTML, CSS and script in one file, nothing fetched from
elsewhere). The page polls ``GET /ui/cluster`` every second, which answers this node's ``/status`` together
with every other member's own ``/status``, fetched by this node with the caller's token, so that each row
shows what that node says of itself. With tokens, ``/ui/cluster`` needs the read role like ``/status`` (every
member checks it again); the page itself holds no data and asks for the token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import ssl
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

ui = Blueprint("ui", __name__)

_PEER_TIMEOUT = 1.0  # the page refreshes every second: a member slower than this is shown as not answering
_PAGE = resources.files("hraftd").joinpath("ui.html").read_bytes()
_SCRIPT = re.search(rb"<script>(.*?)</script>", _PAGE, re.DOTALL)
assert _SCRIPT is not None, "ui.html has its script inline"
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_SCRIPT.group(1)).digest()).decode()
# The page may run its own script and talk to this node, nothing else.
_CONTENT_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; "
                   f"form-action 'none'; frame-ancestors 'none'; script-src 'sha256-{_SCRIPT_HASH}'")


@ui.get("/ui")
def page() -> Response:
    response = Response(_PAGE, mimetype="text/html")
    response.headers["Content-Security-Policy"] = _CONTENT_POLICY
    response.headers["Cache-Control"] = "no-cache"
    return response


@ui.get("/ui/cluster")
def cluster() -> Response:
    """This node's status and, for each member, its own status or why it did not answer (read role: web.py)."""
    store = current_app.config["STORE"]
    own = store.status()
    others = [member for member in own["members"] if member["id"] != own["id"]]
    tls: ssl.SSLContext | None = current_app.config["PEER_TLS"]
    headers = {"Authorization": request.headers["Authorization"]} if "Authorization" in request.headers else {}
    with ThreadPoolExecutor(max_workers=max(len(others), 1)) as pool:
        answers = list(pool.map(lambda member: _status_of(member["http_addr"], tls, headers), others))
    views = {own["id"]: {"status": own, "error": None}}
    for member, (status, error) in zip(others, answers, strict=True):
        views[member["id"]] = {"status": status, "error": error}
    members = [{**member, **views[member["id"]]} for member in own["members"]]
    return jsonify(node=own["id"], members=members)


def _status_of(http_addr: str | None, tls: ssl.SSLContext | None, headers: dict[str, str],
               ) -> tuple[dict[str, Any] | None, str | None]:
    """(status, None) from the member at ``http_addr``, or (None, why not)."""
    if http_addr is None:
        return None, "its HTTP address is not known yet"
    asked = urllib.request.Request(f"{'https' if tls else 'http'}://{http_addr}/status", headers=headers)
    try:
        with urllib.request.urlopen(asked, timeout=_PEER_TIMEOUT, context=tls) as answer:
            return json.load(answer), None
    except urllib.error.HTTPError as answer:
        return None, f"answered {answer.code}"
    except urllib.error.URLError as failure:
        return None, _reason(failure.reason)
    except (OSError, ValueError) as failure:
        return None, _reason(failure)


def _reason(failure: object) -> str:
    """``connection refused`` rather than ``[Errno 111] Connection refused``."""
    if isinstance(failure, TimeoutError):
        return "no answer in time"
    if isinstance(failure, OSError) and failure.strerror:
        return failure.strerror.lower()
    return str(failure) or type(failure).__name__
