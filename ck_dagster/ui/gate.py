"""A per-user secret token in front of an ASGI app, as Jupyter does on shared machines.

Every HTTP request and websocket needs the token: in the URL once (``?token=...``, answered
with a redirect that sets a cookie and drops it from the address bar), then the cookie; or an
``Authorization: token ...`` / ``Bearer ...`` or ``X-CK-Dagster-Token`` header (scripts, curl).
No token: 401; a wrong one: 403; a websocket without it is refused (403) before it opens.
The token is kept in a file only its owner can read (0600) in the Dagster home.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from ck_dagster.errors import CkError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

#: the token file in DAGSTER_HOME.
TOKEN_FILE = "ui_token"
#: the header scripts may send the token in (besides ``Authorization``).
TOKEN_HEADER = "x-ck-dagster-token"
QUERY_PARAMETER = "token"


def ensure_token(home: Path) -> str:
    """The UI token kept in ``home/ui_token``, created (0600) on first use. A token file that
    others could read, or that another user owns, is refused: its token may have leaked."""
    path = home / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _kept_token(path)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def _kept_token(path: Path) -> str:
    """The token of an existing file, refused when others can read it or it is too short."""
    info = path.stat()
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise CkError(
            f"{path} is readable by other users (mode {stat.S_IMODE(info.st_mode):o}) or not "
            "yours: its token may have leaked. Delete it; the next `ck-dagster ui` makes a "
            "new one"
        )
    token = path.read_text().strip()
    if len(token) < 32:
        raise CkError(
            f"{path} does not hold a token of at least 32 characters: delete it; "
            "the next `ck-dagster ui` makes a new one"
        )
    return token


class TokenGate:
    """ASGI middleware: passes only requests that carry ``token`` (see the module docstring).
    ``cookie``: the cookie's name (one per port: browsers share cookies across ports)."""

    def __init__(self, app: App, token: str, cookie: str) -> None:
        self.app = app
        self.token = token
        self.cookie = cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope.get("headers", [])
        }
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        in_url = [value for name, value in query if name == QUERY_PARAMETER]
        presented = in_url + self._from_headers(headers)
        if not presented:
            await self._refuse(scope, receive, send, 401, "a token is needed")
        elif not any(self._valid(value) for value in presented):
            await self._refuse(scope, receive, send, 403, "the token is wrong")
        elif in_url and scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            await self._set_cookie_and_redirect(scope, query, send)
        else:
            await self.app(scope, receive, send)

    def _valid(self, value: str) -> bool:
        return hmac.compare_digest(value.encode(), self.token.encode())

    def _from_headers(self, headers: dict[str, str]) -> list[str]:
        found = []
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() in ("token", "bearer") and credentials.strip():
            found.append(credentials.strip())
        if headers.get(TOKEN_HEADER):
            found.append(headers[TOKEN_HEADER].strip())
        if "cookie" in headers:
            cookies: SimpleCookie = SimpleCookie()
            try:
                cookies.load(headers["cookie"])
            except Exception:  # a malformed Cookie header carries no token
                return found
            if self.cookie in cookies:
                found.append(cookies[self.cookie].value)
        return found

    async def _set_cookie_and_redirect(
        self, scope: Scope, query: list[tuple[str, str]], send: Send
    ) -> None:
        rest = urlencode([(n, v) for n, v in query if n != QUERY_PARAMETER])
        location = (scope.get("root_path", "") + scope["path"]) + (f"?{rest}" if rest else "")
        cookie = f"{self.cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict"
        await send(
            {
                "type": "http.response.start",
                "status": 302,
                "headers": [
                    (b"location", location.encode("latin-1")),
                    (b"set-cookie", cookie.encode("latin-1")),
                    (b"cache-control", b"no-store"),
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, why: str
    ) -> None:
        if scope["type"] == "websocket":
            await receive()  # websocket.connect; closing before accepting answers 403
            await send({"type": "websocket.close", "code": 1008})
            return
        body = (
            f"{status}: {why}. Open the URL `ck-dagster ui` printed (it carries the "
            "token), or send the header `Authorization: token <token>`; the token is in "
            f"$DAGSTER_HOME/{TOKEN_FILE}.\n"
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"www-authenticate", b"Token"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
