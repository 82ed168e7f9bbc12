"""Access control and response hardening: the bearer token, security headers, loopback check.

With ``settings.token`` set, every API route except ``GET /health`` (liveness, no details) and the
viewer page needs ``Authorization: Bearer <token>``, compared in constant time; otherwise 401.
Every response says ``nosniff``, no referrer, no framing; API answers (patient images, results)
are ``Cache-Control: no-store``; the page gets a Content-Security-Policy that allows only its own
inline script (by hash) and same-origin requests.
"""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SecurityHeaders", "bearer_scheme", "is_loopback", "request_authorized", "require_token"]

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
