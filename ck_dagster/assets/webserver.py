"""``ck-dagster ui``: Dagster's webserver and daemon for one instance, for its owner only.

The webserver's ASGI app is served in this process, wrapped in :class:`TokenGate`, by uvicorn
bound to 127.0.0.1: there is no second, unprotected port to reach, HTTP, GraphQL and websockets
alike. The daemon (schedules, sensors, automation, queued runs) runs beside it. The process
mask is 0077, so the sockets and files the webserver, the daemon and their code servers
create are their owner's only (``ck-dagster ui`` sets it before it touches the instance).
"""

from __future__ import annotations

import contextlib
import ctypes
import getpass
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from ck_dagster.errors import CkError
from ck_dagster.settings import child_environment
from ck_dagster.ui.gate import TOKEN_FILE, TokenGate, ensure_token

#: the code location the UI and daemon load (workspace.yaml names the same module).
DEFINITIONS_MODULE = "ck_dagster.definitions"
LOCATION_NAME = "ck_dagster"
DEFAULT_PORT = 3000
#: ports tried after DEFAULT_PORT when it is taken and no --port was given.
PORTS_TO_TRY = 100
LOOPBACK = "127.0.0.1"


def choose_port(port: int | None) -> int:
    """``port`` if it is free on the loopback, else refused; without one, the first free port
    from 3000 on."""
    candidates = [port] if port else range(DEFAULT_PORT, DEFAULT_PORT + PORTS_TO_TRY)
    for candidate in candidates:
        with socket.socket() as probe:
            try:
                probe.bind((LOOPBACK, candidate))
            except OSError:
                continue
            return candidate
    raise CkError(
        f"port {port} is in use (another `ck-dagster ui`?): choose another with --port"
        if port
        else f"no free port from {DEFAULT_PORT} to "
        f"{DEFAULT_PORT + PORTS_TO_TRY - 1}: choose one with --port"
    )


def banner(port: int, token: str, home: Path) -> str:
    """What ``ck-dagster ui`` prints: the URL with its token and the ``ssh -L`` line."""
    url = f"http://{LOOPBACK}:{port}/?token={token}"
    return (
        f"Dagster UI and daemon for DAGSTER_HOME={home}, for {getpass.getuser()} only "
        f"(token in {home / TOKEN_FILE}). Open:\n    {url}\n"
        f"From your laptop, forward the port first:\n"
        f"    ssh -N -L {port}:{LOOPBACK}:{port} {getpass.getuser()}@{socket.getfqdn()}\n"
        f"then open the same URL there. Stop with Ctrl-C."
    )


def serve_ui(home: Path, port: int | None, echo: Callable[[str], object] = print) -> None:
    """Run the daemon and the token-gated webserver until interrupted."""
    import uvicorn
    from dagster import DagsterInstance

    from ck_dagster.assets.dagster_internals import webserver_app

    # SIGTERM before uvicorn takes the signal over (loading the webserver takes seconds) must
    # still unwind the context managers below, which stop the daemon
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    token = ensure_token(home)
    if home.stat().st_mode & 0o077:
        echo(f"note: other users can read {home} (the run history is there): chmod 700 {home}")
    port = choose_port(port)
    with (
        _daemon(home),
        DagsterInstance.get() as instance,
        webserver_app(instance, DEFINITIONS_MODULE, LOCATION_NAME) as app,
    ):
        echo(banner(port, token, home))
        uvicorn.run(
            TokenGate(app, token, cookie=f"ck_dagster_token_{port}"),
            host=LOOPBACK,
            port=port,
            log_level="warning",
        )


@contextlib.contextmanager
def _daemon(home: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``dagster-daemon run`` for the instance, in a process group of its own (its code server
    with it), stopped when the UI stops."""
    command = Path(sys.executable).with_name("dagster-daemon")
    process = subprocess.Popen(
        [str(command), "run", "-m", DEFINITIONS_MODULE, "--log-level", "warning"],
        env=child_environment({"DAGSTER_HOME": str(home)}),
        start_new_session=True,
        preexec_fn=_terminate_with_parent,
    )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM as a normal exit, so ``finally`` blocks run."""
    raise SystemExit(128 + signum)


#: prctl(2): the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> None:
    """In the daemon's process, before it starts: Linux sends it SIGTERM when ``ck-dagster ui``
    dies, even by SIGKILL, so no daemon outlives its UI."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
