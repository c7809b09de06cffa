"""A real headless browser for tests: Debian's chromium, driven through chromedriver's WebDriver HTTP API.

Install with ``apt-get install chromium chromium-driver`` (``.ci/run`` does). The W3C WebDriver protocol is
plain JSON over HTTP, so no client library is needed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

from nodes import free_port

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def missing() -> str | None:
    """Why no browser can be started here, or None."""
    for program in ("chromium", "chromedriver"):
        if shutil.which(program) is None:
            return f"{program} is not installed (apt-get install chromium chromium-driver)"
    return None


class Browser:
    """One chromium session with a fresh profile; always quit, with its driver, by ``close``."""

    def __init__(self, width: int = 1280, height: int = 720) -> None:
        self.port = free_port()
        self.profile = tempfile.mkdtemp(prefix="hraftd-chromium-")
        self.driver = subprocess.Popen(["chromedriver", f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        self.session: str | None = None
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    self._call("GET", "/status")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            capabilities = {"browserName": "chrome", "goog:chromeOptions": {
                "binary": shutil.which("chromium"),
                "args": [*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}"]}}
            answer = self._call("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})
            self.session = answer["sessionId"]
        except BaseException:
            self.close()
            raise

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.load(answer)["value"]

    def command(self, method: str, path: str, body: Any = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", body)

    def open(self, url: str) -> None:
        self.command("POST", "/url", {"url": url})

    def run(self, script: str, *args: Any) -> Any:
        """Run ``script`` (a function body; ``arguments`` holds ``args``) in the page and return its value."""
        return self.command("POST", "/execute/sync", {"script": script, "args": list(args)})

    def screenshot_png(self) -> bytes:
        return base64.b64decode(self.command("GET", "/screenshot"))

    def close(self) -> None:
        if self.session is not None:
            with contextlib.suppress(OSError):
                self.command("DELETE", "")
            self.session = None
        self.driver.kill()
        self.driver.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)
