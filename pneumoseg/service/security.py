"""Access control and response hardening: the bearer token, security headers, loopback check.

With ``settings.token`` set, every API route except ``GET /health`` (liveness, no details) and the
viewer page needs ``Authorization: Bearer <token>``, compared in constant time; otherwise 401.
Every response says ``nosniff``, no referrer, no framing; API answers (patient images, results)
are ``Cache-Control: no-store``; the page gets a Content-Security-Policy that allows only its own
inline script (by hash) and same-origin requests.

:class:`HostGuard` answers 400 to a request whose Host header is not an allowed host (DNS
rebinding: a web page whose name resolves to 127.0.0.1 would otherwise read a loopback service) and
403 to a POST/PUT/PATCH/DELETE whose Origin (or, without one, Referer) is not an allowed host (cross-site
request forgery). Allowed: ``localhost``, ``127.0.0.1``, ``::1``, the bound address and
``settings.allowed_hosts`` (``NAME`` matches any port, ``NAME:PORT`` that port only).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Iterable
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HostGuard", "SecurityHeaders", "allowed_host_set", "bearer_scheme", "is_loopback", "parse_host", "request_authorized", "require_token"]

bearer_scheme = HTTPBearer(auto_error=False, description="Set with `pneumoseg serve --token` or PNEUMOSEG_TOKEN.")

_COMMON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def is_loopback(host: str) -> bool:
    """True when ``host`` is ``localhost`` or a loopback address (127.0.0.0/8, ::1); names are not resolved."""
    if host.strip().lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _token_matches(credentials: HTTPAuthorizationCredentials | None, token: str) -> bool:
    if credentials is None or credentials.scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.credentials.encode("utf-8", "surrogateescape"), token.encode("utf-8"))


async def request_authorized(request: Request) -> bool:
    """True when no token is configured or the request carries it."""
    token = request.app.state.settings.token
    return token is None or _token_matches(await bearer_scheme(request), token)


async def require_token(request: Request) -> None:
    """Dependency: 401 unless ``request_authorized``; runs before the upload body is read."""
    if not await request_authorized(request):
        raise HTTPException(status_code=401, detail="missing or wrong access token: send "
                                                    "'Authorization: Bearer <token>' (pneumoseg serve --token)",
                            headers={"WWW-Authenticate": "Bearer"})


class SecurityHeaders:
    """ASGI middleware adding the headers above; ``page_csp`` is sent with ``GET /`` only."""

    def __init__(self, app: ASGIApp, page_csp: str) -> None:
        self.app = app
        self.page_csp = page_csp.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        is_page = path == "/"
        is_api = not is_page and path != "/openapi.json"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in _COMMON_HEADERS if k not in present]
                if is_page:
                    headers.append((b"content-security-policy", self.page_csp))
                if is_api:
                    headers = [(k, v) for k, v in headers if k.lower() != b"cache-control"]
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_WILDCARDS = ("", "0.0.0.0", "::")
_UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def parse_host(value: str) -> tuple[str, int | None] | None:
    """``"Name:8000"`` -> ``("name", 8000)``, ``"[::1]"`` -> ``("::1", None)``; None when malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
    elif value.count(":") > 1:  # a bare IPv6 address (as configured; never valid in a Host header)
        name, port_text = value, None
    else:
        name, sep, port_text = value.partition(":")
        port_text = port_text if sep else None
    name = name.rstrip(".")
    if not name:
        return None
    if port_text is None:
        return name, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return name, int(port_text)


def allowed_host_set(bind_host: str, extra: Iterable[str]) -> frozenset[tuple[str, int | None]]:
    """The allowed (name, port or None) pairs: loopback names, the bound address, ``extra``."""
    names = [*LOOPBACK_NAMES, *([] if bind_host.strip("[]") in _WILDCARDS else [bind_host]), *extra]
    return frozenset(p for p in (parse_host(n) for n in names) if p is not None)


def _allowed(pair: tuple[str, int | None] | None, allowed: frozenset[tuple[str, int | None]]) -> bool:
    return pair is not None and ((pair[0], None) in allowed or pair in allowed)


class HostGuard:
    """ASGI middleware: 400 for a Host that is not allowed, 403 for a cross-origin state change."""

    def __init__(self, app: ASGIApp, allowed: frozenset[tuple[str, int | None]]) -> None:
        self.app = app
        self.allowed = allowed

    @staticmethod
    async def _refuse(send: Send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for key, value in scope.get("headers", []):
            headers.setdefault(key.lower(), value)
        host = headers.get(b"host", b"").decode("latin-1")
        if not _allowed(parse_host(host), self.allowed):
            await self._refuse(send, 400, f"host {host[:100]!r} not allowed: use localhost or an address the "
                                          "server listens on, or add it with --allowed-host")
            return
        if scope.get("method", "GET") in _UNSAFE_METHODS:
            source = headers.get(b"origin") or headers.get(b"referer")
            if source is not None and not self._origin_allowed(source.decode("latin-1")):
                await self._refuse(send, 403, "cross-origin request refused: the Origin/Referer is not an "
                                              "allowed host (--allowed-host)")
                return
        await self.app(scope, receive, send)

    def _origin_allowed(self, source: str) -> bool:
        try:
            parts = urlsplit(source.strip())
            name, port = parts.hostname, parts.port
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not name:
            return False  # "null" (sandboxed or file: pages) and anything that is not a web origin
        return _allowed((name.rstrip("."), port), self.allowed)
