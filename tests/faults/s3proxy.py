"""A fault-injecting HTTP proxy on loopback, in front of the S3 server (moto's) of the tests.

It forwards every request and, on a deterministic schedule, answers some of them badly, the ways S3
(or the network to it) does now and then:

* ``slowdown``: 503 SlowDown with S3's XML error body (throttling), without forwarding;
* ``internal``: 500 InternalError, without forwarding;
* ``conflict``: 409 ConditionalRequestConflict, without forwarding (only for a conditional PUT:
  S3's answer while another conditional write to the key is in flight);
* ``drop``: the request IS forwarded (S3 acts on it), then the connection is closed before any
  response: the client cannot know whether its PUT landed;
* ``cut``: the full status and headers (with the full Content-Length), then half the body, then
  the connection is closed (only for responses with a body of 2 bytes or more);
* ``delay``: forwarded, then the response is held ``delay_s`` seconds, longer than the client's
  read timeout, so the client gives up and retries (the late response goes nowhere).

Schedule: ``every[kind] = n`` injects ``kind`` on every n-th request eligible for it (counted per
kind; one kind per request, the first due in the order above). The request right after an injected
fault is forwarded cleanly (unless ``cooldown`` is off), so one operation is not failed many times
in a row by chance alignment of the periods. ``at[n] = kind`` also injects ``kind`` (one decided
before forwarding) on exactly the n-th request. ``injected`` counts what was injected, ``requests``
what arrived.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

KINDS = ("slowdown", "internal", "conflict", "drop", "delay", "cut")
_BEFORE = ("slowdown", "internal", "conflict", "drop", "delay")  # decided when the request arrives
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}

_ERRORS = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "internal": (500, "InternalError", "We encountered an internal error. Please try again."),
    "conflict": (409, "ConditionalRequestConflict", "A conflicting conditional operation is in progress."),
}


def _error_body(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>kdflow-fault-proxy</RequestId></Error>").encode()


class FaultProxy:
    def __init__(self, upstream: str, every: dict[str, int], delay_s: float = 3.0, cooldown: bool = True):
        unknown = set(every) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {KINDS}")
        u = urlparse(upstream)
        self.upstream = (u.hostname, u.port)
        self.every = dict(every)
        self.delay_s = delay_s
        self.cooldown = cooldown
        self.at: dict[int, str] = {}
        self.injected: Counter = Counter()
        self.requests = 0
        self.log: list[tuple[int, str, str, str]] = []  # (request number, method, path, fault) of each fault
        self._seen: Counter = Counter()
        self._cool = False
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- schedule -------------------------------------------------------------------------------

    def _arrive(self, method: str, path: str, conditional: bool) -> tuple[int, bool, str | None]:
        """(request number, may a fault hit this request, the fault decided before forwarding)."""
        with self._lock:
            self.requests += 1
            n = self.requests
            if n in self.at:
                self._record(n, method, path, self.at[n])
                return n, True, self.at[n]
            if self._cool:
                self._cool = False
                return n, False, None
            for kind in _BEFORE:
                if kind in self.every and (kind != "conflict" or conditional):
                    self._seen[kind] += 1
                    if self._seen[kind] % self.every[kind] == 0:
                        self._record(n, method, path, kind)
                        return n, True, kind
            return n, True, None

    def _cut_due(self, n: int, method: str, path: str) -> bool:
        with self._lock:
            if "cut" not in self.every:
                return False
            self._seen["cut"] += 1
            if self._seen["cut"] % self.every["cut"]:
                return False
            self._record(n, method, path, "cut")
            return True

    def _record(self, n: int, method: str, path: str, kind: str) -> None:
        self.injected[kind] += 1
        self.log.append((n, method, path, kind))
        self._cool = self.cooldown

    # -- server ---------------------------------------------------------------------------------

    def start(self) -> str:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline().strip():  # trailers, up to the blank line
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self):
                self.close_connection = True  # one request per connection: simple, and loopback is cheap
                body = self._body()
                n, may_fault, fault = proxy._arrive(self.command, self.path,
                                                    self.command == "PUT" and "If-None-Match" in self.headers)
                if fault in _ERRORS:
                    status, code, message = _ERRORS[fault]
                    payload = b"" if self.command == "HEAD" else _error_body(code, message)
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                status, reason, headers, payload = proxy._forward(self.command, self.path, self.headers, body)
                if fault == "drop":
                    return  # S3 acted on the request; the client hears nothing
                if fault == "delay":
                    time.sleep(proxy.delay_s)  # the client has timed out and gone: this answer is lost
                cut = (fault is None and may_fault and self.command != "HEAD" and len(payload) >= 2
                       and proxy._cut_due(n, self.command, self.path))
                try:
                    self.send_response(status, reason)
                    for k, v in headers:
                        self.send_header(k, v)
                    if self.command != "HEAD":
                        self.send_header("Content-Length", str(len(payload)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(payload[: len(payload) // 2] if cut else payload)
                    self.wfile.flush()
                except OSError:
                    pass  # the client is gone (after a delay)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False  # delayed handlers sleep; stopping must not wait for them
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _forward(self, method: str, path: str, headers, body: bytes):
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            # Host stays as the client sent it (it is part of the request's signature).
            out = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
            if body or method in ("PUT", "POST"):
                out["Content-Length"] = str(len(body))
            conn.request(method, path, body=body or None, headers=out)
            resp = conn.getresponse()
            payload = resp.read()
            keep = [(k, v) for k, v in resp.getheaders()
                    if k.lower() not in _HOP_BY_HOP and (method == "HEAD" or k.lower() != "content-length")]
            return resp.status, resp.reason, keep, payload
        finally:
            conn.close()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
