"""The status page at /ui, in a real headless chromium against a real 3-node cluster.

HRAFTD_UI_SCREENSHOT=path.png saves what the page shows while a member is down (docs/status-page.png).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import browser
import pytest
import requests
from nodes import wait_for
from test_security import TOKENS, auth_files, bearer  # noqa: F401 (auth_files is a fixture)

pytestmark = pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))

ROWS = """
return [...document.querySelectorAll('#members tbody tr')].map(row => ({
  id: row.dataset.id, up: row.className === 'up', role: row.querySelector('.role').textContent,
  term: row.querySelector('.term').textContent, commit: row.querySelector('.commit').textContent,
  applied: row.querySelector('.applied').textContent, lag: row.querySelector('.lag').textContent,
  raft: row.querySelector('.raft').textContent, answers: row.querySelector('.answers').textContent,
  leader: row.querySelector('.leader') !== null}));
"""
EVENTS = "return [...document.querySelectorAll('#events li')].map(item => item.textContent);"


@pytest.fixture
def chromium():
    session = browser.Browser(width=1200, height=620)
    yield session
    session.close()


def rows(page: browser.Browser) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in page.run(ROWS)}


def shows_the_cluster(page: browser.Browser, nodes, leader) -> bool:
    """Every member is listed, up, with the leader marked, and numbers each node reports of itself."""
    shown = rows(page)
    if set(shown) != {node.name for node in nodes} or not all(row["up"] for row in shown.values()):
        return False
    for node in nodes:
        status, row = node.status(), shown[node.name]
        if row["term"] != str(status["term"]) or row["leader"] != (node is leader):
            return False
        if not (0 < int(row["applied"]) <= status["applied_index"] and int(row["lag"]) >= 0):
            return False
    return shown[leader.name]["role"].startswith("leader")


def test_the_page_follows_a_member_going_down_and_coming_back(cluster, chromium):
    nodes = cluster.start(3)
    leader = cluster.leader()
    viewer = nodes[0]
    victim = next(node for node in nodes if node is not viewer and node is not leader) \
        if viewer is not leader else nodes[1]
    page = requests.get(f"{viewer.url}/ui", timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "script-src 'sha256-" in page.headers["Content-Security-Policy"]
    assert "http://" not in page.text.replace("http://www.w3.org", "") and "https://" not in page.text  # no CDN

    chromium.open(f"{viewer.url}/ui")
    wait_for(lambda: shows_the_cluster(chromium, nodes, leader), 15, "the page to show all three members")
    assert any(f"watching the cluster from {viewer.name}" in event for event in chromium.run(EVENTS))

    victim.kill()
    killed = time.monotonic()
    wait_for(lambda: not rows(chromium)[victim.name]["up"], 2.0, f"the page to show {victim.name} down within 2 s")
    print(f"the page showed {victim.name} down {time.monotonic() - killed:.2f} s after the kill")
    shown = rows(chromium)[victim.name]
    assert shown["answers"].startswith("no:") and shown["term"] == "\u2013"  # a dash: nothing known
    assert all(row["up"] for name, row in rows(chromium).items() if name != victim.name)
    wait_for(lambda: rows(chromium)[victim.name]["raft"] == "disconnected", 15, "the Raft link to show as lost")
    assert any(f"{victim.name} stopped answering" in event for event in chromium.run(EVENTS))
    if os.environ.get("HRAFTD_UI_SCREENSHOT"):
        Path(os.environ["HRAFTD_UI_SCREENSHOT"]).write_bytes(chromium.screenshot_png())

    victim.start()
    wait_for(lambda: rows(chromium)[victim.name]["up"] and rows(chromium)[victim.name]["raft"] == "connected", 30,
             f"the page to show {victim.name} back")
    events = chromium.run(EVENTS)
    assert any(f"{victim.name} answers again" in event for event in events), events
    wait_for(lambda: shows_the_cluster(chromium, nodes, cluster.leader()), 30, "the whole cluster healthy again")


def test_with_tokens_the_page_asks_for_a_read_token(cluster, chromium, auth_files):  # noqa: F811
    secured = ("-auth-file", auth_files["tokens"], "-auth-token-file", auth_files["admin"])
    node0 = cluster.node("node0").start(None, *secured)
    wait_for(lambda: requests.get(f"{node0.url}/status", headers=bearer("read"), timeout=5).json()["ready"], 30,
             "node0 to be ready")
    assert requests.get(f"{node0.url}/ui", timeout=5).status_code == 200  # the page holds no data
    refused = requests.get(f"{node0.url}/ui/cluster", timeout=5)
    assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
    assert requests.get(f"{node0.url}/ui/cluster", headers={"Authorization": "Bearer nope"}, timeout=5
                        ).status_code == 401
    answer = requests.get(f"{node0.url}/ui/cluster", headers=bearer("read"), timeout=5)
    assert answer.status_code == 200 and [m["id"] for m in answer.json()["members"]] == ["node0"]

    chromium.open(f"{node0.url}/ui")
    wait_for(lambda: chromium.run("return !document.getElementById('token').hidden"), 10, "the token form")
    assert chromium.run("return document.querySelectorAll('#members tbody tr').length") == 0
    chromium.run("document.getElementById('token-input').value = arguments[0];"
                 "document.getElementById('token').requestSubmit();", TOKENS["read"])
    wait_for(lambda: list(rows(chromium)) == ["node0"] and rows(chromium)["node0"]["up"], 10,
             "the page to show the cluster with the read token")
