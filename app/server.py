"""How the API is served: uvicorn with request-header limits that bound memory and time before
any request reaches the application (and so before authentication).

uvicorn's default HTTP parser (httptools) buffers request headers without a limit: 64 MB
headers were accepted, and 8 unfinished 64 MB headers took the API from 277 to 846 MB; a
connection that never finishes its headers stayed open for minutes. Here every connection is
served by :class:`GuardedH11Protocol` (uvicorn's h11 protocol with two guards):

- NVC_MAX_HEADER_BYTES: the request line and headers of one request may take at most this many
  bytes; beyond, the connection is answered 431 and closed, and the bytes are not kept;
- NVC_HEADER_TIMEOUT_SECONDS: a connection must complete its request headers within this time
  of connecting (or of its previous response); else it is closed.

`nvc api`, `nvc serve` and the tests' API processes (`python -m app.server`) all use
:func:`uvicorn_options`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.settings import Settings, get_settings


def _problem(status: int, title: str, detail: str) -> bytes:
    body = json.dumps({"type": "urn:nvc:problem:header-too-large", "title": title, "status": status,
                       "detail": detail}).encode()
    head = (f"HTTP/1.1 {status} {title}\r\ncontent-type: application/problem+json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
    return head + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-header size limit (431) and a header read timeout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()  # in whichever process serves: read from its environment
        self.max_header_bytes = settings.max_header_bytes
        self.header_timeout = settings.header_timeout_seconds

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0  # bytes received since the current request's first byte
        self._tail = b""  # the last 3 of them: an end of headers may straddle two reads
        self._header_timer = None
        self._arm()

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self.logger.info("closing a connection that sent no complete request headers in %g s", self.header_timeout)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # reading a request line and headers: measure them first
            buf = self._tail + data
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                head_len = self._head_bytes - len(self._tail) + end + 4
            else:
                head_len = self._head_bytes + len(data)
            if head_len > self.max_header_bytes:  # refuse, and keep none of it
                self._disarm()
                self.transport.write(_problem(
                    431, "Request Header Fields Too Large",
                    f"the request headers are larger than {self.max_header_bytes} bytes (NVC_MAX_HEADER_BYTES)"))
                self.transport.close()
                return
            self._head_bytes += len(data)
            self._tail = buf[-3:]
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are complete: the request runs
            self._disarm()
            self._head_bytes, self._tail = 0, b""

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._head_bytes, self._tail = 0, b""
            self._arm()  # the next request on this connection gets the same time for its headers

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


def uvicorn_options(settings: Settings | None = None) -> dict[str, Any]:
    """uvicorn.run / uvicorn.Config options of the API (an import string: also for --workers N)."""
    settings = settings or get_settings()
    return {"http": "app.server:GuardedH11Protocol", "h11_max_incomplete_event_size": settings.max_header_bytes}


def main(argv: list[str] | None = None) -> None:
    """`python -m app.server --host H --port P`: the API as `nvc api` serves it (no CLI extras)."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    uvicorn.run("app.main:create_app", factory=True, host=args.host, port=args.port, log_level=args.log_level,
                **uvicorn_options())


if __name__ == "__main__":
    main()
