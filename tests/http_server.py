"""A real HTTP server on 127.0.0.1 for tests, as the pytest fixture ``http_server``.

Use it from a test module (the fixture is called ``http_server``) with::

    from http_server import HttpTestServer, http_server_fixture  # noqa: F401 - the fixture

    def test_it(http_server):
        http_server.route("POST", "/items", status=201, json={"id": 1})
        ...  # send requests to http_server.url + "/items"
        assert http_server.requests[0].json == {...}

(``tests/`` is on ``sys.path`` under pytest: it has no ``__init__.py``, so
pytest's default import mode puts the folder of each test module and
conftest.py there, with ``pytest`` and ``python -m pytest`` alike.)

Routes answer by method and path (the query string is ignored for matching
and kept in the recorded path); anything unrouted gets a 404 with a text body.
"""

from __future__ import annotations

import json as jsonlib
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest

__all__ = ["HttpTestServer", "Recorded", "Route", "http_server_fixture"]


@dataclass
class Recorded:
    """One request the server received."""

    method: str
    path: str  # with the query string
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def json(self) -> Any:
        """The body parsed as JSON (raises if it is not JSON)."""
        return jsonlib.loads(self.body)


@dataclass
class Route:
    """What the server answers for one method and path."""

    status: int = 200
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up early (timeout and max_body tests) are expected;
        # anything else is a bug in the test server and is printed.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class HttpTestServer:
    """A ThreadingHTTPServer on an ephemeral 127.0.0.1 port, in a daemon thread."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        # Set at shutdown: wakes handlers waiting out a route's delay, so a
        # slow route never outlives its test.
        self._closing = threading.Event()
        self._httpd = _QuietServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self.port: int = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # A short poll interval: shutdown() waits for the serving loop's next poll.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="http-test-server", daemon=True
        )
        self._thread.start()

    def route(
        self,
        method: str,
        path: str,
        *,
        status: int = 200,
        json: Any = None,
        body: bytes | str | None = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer ``method path`` with ``status`` and a ``json`` or raw ``body``.

        ``json`` sets ``Content-Type: application/json`` unless
        ``content_type`` says otherwise; ``delay`` waits that many seconds
        before answering.
        """
        if json is not None and body is not None:
            raise ValueError("give json or body, not both")
        if json is not None:
            data = jsonlib.dumps(json).encode()
            content_type = content_type or "application/json"
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body or b""
        with self._lock:
            self.routes[(method.upper(), path)] = Route(status, data, content_type, dict(headers or {}), delay)

    def url_for(self, path: str) -> str:
        return self.url + path

    def close(self) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # -- called by the handler threads --------------------------------------

    def _record(self, request: Recorded) -> Route | None:
        with self._lock:
            self.requests.append(request)
            return self.routes.get((request.method, urlsplit(request.path).path))


def _handler_for(server: HttpTestServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            recorded = Recorded(
                method=self.command,
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
            route = server._record(recorded)
            if route is None:
                route = Route(status=404, body=f"no route for {self.command} {self.path}".encode(), content_type="text/plain")
            if route.delay and server._closing.wait(route.delay):
                return  # shutting down: drop the request
            try:
                self.send_response(route.status)
                if route.content_type:
                    self.send_header("Content-Type", route.content_type)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                # 204 and 304 carry no body and no length.
                if route.status not in (204, 304):
                    self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                if self.command != "HEAD" and route.status not in (204, 304):
                    self.wfile.write(route.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test); nothing to answer

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean; the requests are recorded instead

    return Handler


# Named apart from its function so that a module importing it can take a
# parameter called ``http_server`` without shadowing the import (ruff F811).
@pytest.fixture(name="http_server")
def http_server_fixture() -> Iterator[HttpTestServer]:
    """A running :class:`HttpTestServer`, shut down after the test."""
    server = HttpTestServer()
    try:
        yield server
    finally:
        server.close()
