"""Connection-level limits for uvicorn: a request-head deadline, a body deadline, a connection cap.

uvicorn bounds only idle keep-alive time (``timeout_keep_alive``) and answers 503 once
``limit_concurrency`` is reached *after* a request head has been parsed; a client that sends its
head one byte at a time (slowloris) is never dropped and keeps a descriptor forever. The protocol
made by :func:`guarded_protocol` adds, per connection:

- a **head deadline**: the request line and headers must be complete within ``header_timeout``
  seconds of the connection being opened (or of the previous response on a kept-alive
  connection); otherwise the client gets ``408`` and the connection is closed;
- a **body deadline**: the whole request body must arrive within ``body_timeout`` seconds of the
  head; otherwise the connection is closed;
- a **connection cap**: a connection beyond ``max_connections`` open ones is answered ``503`` and
  closed at once, before anything is read, so slow clients cannot fill the descriptor table.

Only the h11 implementation is extended (the one uvicorn picks without ``httptools``); it is
passed to uvicorn as ``http=`` (see :func:`pneumoseg.service.server.uvicorn_options`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["GuardedH11Protocol", "guarded_protocol"]

_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                     b"content-length: 38\r\nconnection: close\r\n\r\nrequest headers not received in time\r\n")
_BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
                  b"content-length: 40\r\nconnection: close\r\nretry-after: 5\r\n\r\n"
                  b"too many open connections, retry later\r\n")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the deadlines and the cap above (class attributes, see
    :func:`guarded_protocol`)."""

    header_timeout: float = 10.0
    body_timeout: float = 120.0
    max_connections: int = 100

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._refused = False

    # -- connection life ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refused = True
            self.logger.warning("refused a connection: %d already open (--max-connections)",
                                len(self.connections) - 1)
            transport.write(_BUSY_RESPONSE)
            transport.close()
            return
        self._check_deadlines()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        self._check_deadlines()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._check_deadlines()

    # -- deadlines ------------------------------------------------------------------------------
    def _check_deadlines(self) -> None:
        """Arm or cancel the timers from the client's h11 state (IDLE: head incomplete; SEND_BODY)."""
        if self.transport is None or self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            self._cancel_body_timer()
            if self._head_timer is None:  # not re-armed by trickled bytes: one deadline per request
                self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)
        elif state is h11.SEND_BODY:
            self._cancel_head_timer()
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.body_timeout, self._body_timed_out)
        else:
            self._cancel_head_timer()
            self._cancel_body_timer()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        self.logger.info("closed a connection: request head not complete within %g s (--header-timeout)",
                         self.header_timeout)
        if self.conn.our_state is h11.IDLE:
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        self.logger.info("closed a connection: request body not complete within %g s (--body-timeout)",
                         self.body_timeout)
        self.transport.close()


def guarded_protocol(header_timeout: float, body_timeout: float, max_connections: int) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` subclass with these limits, for ``uvicorn.Config(http=...)``."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"header_timeout": float(header_timeout), "body_timeout": float(body_timeout),
                 "max_connections": int(max_connections)})
