"""``ck-dagster ui`` on a shared login node: the webserver and daemon answer only with the
user's token. Checked over real HTTP with curl (and a real websocket client), as another user
or a script would try it."""

from __future__ import annotations

import asyncio
import json
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from ck_dagster.assets.instance import ensure_dagster_home
from ck_dagster.errors import CkError
from ck_dagster.ui.gate import TOKEN_FILE, ensure_token
from ck_dagster_tests.fixtures.webserver import SERVE_TIMEOUT, WebServer

DAEMON_QUERY = "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }"


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    """``ck-dagster ui`` on a fresh Dagster home, serving."""
    root = tmp_path_factory.mktemp("token_ui")
    server = WebServer(ensure_dagster_home(root / "dagster_home"), root / "ui.log", token=True)
    try:
        server.wait_until_serving(SERVE_TIMEOUT)
        yield server
    finally:
        server.stop()


def curl(*args: str) -> tuple[int, dict[str, str], str]:
    """Status, headers (lower-case names) and body of the (last) answer to a curl request."""
    result = subprocess.run(
        ["curl", "--silent", "--show-error", "--include", "--max-time", "30", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    blocks = result.stdout.split("\n\n")  # text mode: \r\n reads as \n
    last = max(i for i, block in enumerate(blocks) if block.startswith("HTTP/"))  # redirects
    status_line, *lines = blocks[last].split("\n")
    body = "\n\n".join(blocks[last + 1 :])
    headers = {
        name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)
    }
    return int(status_line.split()[1]), headers, body


def test_it_prints_the_url_with_its_token_and_the_ssh_command(ui: WebServer) -> None:
    token_file = ui.home / "ui_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert len(ui.token) >= 40
    log = ui.log.read_text()
    assert f"http://127.0.0.1:{ui.port}/?token={ui.token}" in log
    assert re.search(rf"ssh -N -L {ui.port}:127.0.0.1:{ui.port} \S+@\S+", log)
    # bound to the loopback only
    listening = subprocess.run(
        ["ss", "-Hltn", f"sport = :{ui.port}"], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    addresses = {line.split()[3] for line in listening if line.strip()}
    assert addresses == {f"127.0.0.1:{ui.port}"}


@pytest.mark.parametrize(
    "request_args",
    [
        ["/"],
        ["/assets/experiment_report"],
        ["/server_info"],
        ["/graphql", "-H", "content-type: application/json", "--data", '{"query": "{ version }"}'],
    ],
)
def test_without_the_token_nothing_is_served(ui: WebServer, request_args: list[str]) -> None:
    path, *options = request_args
    status, headers, body = curl(*options, ui.url + path)
    assert status == 401 and "Dagster" not in body and "version" not in body
    assert headers["www-authenticate"] == "Token"
    status, _, body = curl(*options, "-H", "Authorization: token not-the-token", ui.url + path)
    assert status == 403 and "Dagster" not in body
    assert curl(*options, ui.url + path + "?token=not-the-token")[0] == 403


def test_the_token_in_the_url_once_then_a_cookie(ui: WebServer, tmp_path: Path) -> None:
    status, headers, _ = curl(f"{ui.url}/assets?view=lineage&token={ui.token}")
    assert status == 302 and headers["location"] == "/assets?view=lineage"  # token dropped
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"ck_dagster_token_{ui.port}={ui.token};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = tmp_path / "cookies"
    status, _, page = curl(
        "--location", "--cookie-jar", str(jar), "--cookie", str(jar), f"{ui.url}/?token={ui.token}"
    )
    assert status == 200 and page.startswith("<!DOCTYPE html>") and "Dagster" in page
    status, _, answer = curl(
        "--cookie",
        str(jar),
        "-H",
        "content-type: application/json",
        "--data",
        json.dumps({"query": "{ version }"}),
        ui.url + "/graphql",
    )
    assert status == 200 and json.loads(answer)["data"]["version"]


def test_a_header_serves_scripts_and_the_daemon_runs(ui: WebServer) -> None:
    """GraphQL with the token in a header; the daemon ``ck-dagster ui`` started reports in."""
    for header in (
        f"Authorization: token {ui.token}",
        f"Authorization: Bearer {ui.token}",
        f"X-CK-Dagster-Token: {ui.token}",
    ):
        status, _, answer = curl(
            "-H",
            header,
            "-H",
            "content-type: application/json",
            "--data",
            json.dumps({"query": DAEMON_QUERY}),
            ui.url + "/graphql",
        )
        assert status == 200, answer
    deadline = time.monotonic() + 90  # its first heartbeats, on a busy machine
    while True:
        daemons = json.loads(answer)["data"]["instance"]["daemonHealth"]["allDaemonStatuses"]
        healthy = {d["daemonType"] for d in daemons if d["healthy"]}
        if {"SENSOR", "SCHEDULER", "ASSET"} <= healthy or time.monotonic() > deadline:
            break
        time.sleep(2)
        answer = curl(
            "-H",
            header,
            "-H",
            "content-type: application/json",
            "--data",
            json.dumps({"query": DAEMON_QUERY}),
            ui.url + "/graphql",
        )[2]
    assert {"SENSOR", "SCHEDULER", "ASSET"} <= healthy, daemons


def test_websockets_need_the_token_too(ui: WebServer) -> None:
    """GraphQL subscriptions (live run logs) go over a websocket: refused before it opens."""

    async def connect(headers: dict[str, str]) -> str:
        async with websockets.connect(
            f"ws://127.0.0.1:{ui.port}/graphql",
            subprotocols=["graphql-ws"],
            additional_headers=headers,
        ) as socket:
            await socket.send(json.dumps({"type": "connection_init", "payload": {}}))
            return json.loads(await asyncio.wait_for(socket.recv(), 30))["type"]

    for headers in ({}, {"Cookie": f"ck_dagster_token_{ui.port}=wrong"}):
        with pytest.raises(websockets.InvalidStatus) as refused:
            asyncio.run(connect(headers))
        assert refused.value.response.status_code == 403
    cookie = {"Cookie": f"ck_dagster_token_{ui.port}={ui.token}"}
    assert asyncio.run(connect(cookie)) == "connection_ack"


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    token = ensure_token(tmp_path)
    assert ensure_token(tmp_path) == token  # kept
    (tmp_path / TOKEN_FILE).chmod(0o644)
    with pytest.raises(CkError, match=r"readable by other users \(mode 644\).*Delete it"):
        ensure_token(tmp_path)
