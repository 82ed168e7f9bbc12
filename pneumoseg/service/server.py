"""Run an app with uvicorn on a background thread, bound to a free port (tests, benchmarks)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from pneumoseg.service.connections import guarded_protocol
from pneumoseg.service.settings import ServiceSettings

__all__ = ["H11_MAX_HEAD_BYTES", "serve_in_background", "uvicorn_options"]

H11_MAX_HEAD_BYTES = 16 * 1024
"""Largest request head (request line + headers) accepted; larger gets 400 from h11."""


def uvicorn_options(settings: ServiceSettings) -> dict[str, object]:
    """``uvicorn.Config`` keywords enforcing the settings' connection limits (head/body deadlines,
    keep-alive, connection cap; see :mod:`pneumoseg.service.connections`)."""
    return {
        "http": guarded_protocol(settings.header_timeout_s, settings.body_timeout_s, settings.max_connections),
        "timeout_keep_alive": settings.keep_alive_s,
        # uvicorn's own 503 once this many requests run at once (tasks can outlive their connection).
        "limit_concurrency": settings.max_connections + 1,
        "h11_max_incomplete_event_size": H11_MAX_HEAD_BYTES,
    }


@contextmanager
def serve_in_background(app: FastAPI, host: str = "127.0.0.1", port: int = 0,
                        startup_timeout: float = 30.0) -> Iterator[str]:
    """Start uvicorn on ``host:port`` (0 = a free port) in a thread; yield its base URL; stop it.

    The socket is bound before the thread starts, so the port cannot be taken in between. The
    connection limits of ``app.state.settings`` apply, as with ``pneumoseg serve``.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    settings = getattr(app.state, "settings", None) or ServiceSettings()
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False, **uvicorn_options(settings))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="pneumoseg-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"uvicorn did not start on {host}:{bound_port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
