"""A real HTTP proxy in front of the moto S3 server that injects faults into the S3 protocol.

Clients talk to the proxy exactly as to S3 (real sockets, real SigV4-signed requests); the proxy forwards each
request to moto unless the mode says otherwise:

* ``flaky``: every ``every``-th request is answered ``503 SlowDown`` (a transient error S3 really returns);
* ``denied``: every request is answered ``403 AccessDenied`` (a permanent error);
* ``stall``: requests are accepted and then left unanswered for ``stall`` seconds (a hung endpoint);
* ``pass``: every request is forwarded (to count them: ``log`` holds each request's method and path).
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
    "<RequestId>kdcache-fault</RequestId></Error>"
)


class FaultyS3Proxy:
    def __init__(self, upstream: str, mode: str, *, every: int = 3, stall: float = 30.0) -> None:
        self.upstream = urlsplit(upstream)
        self.mode, self.every, self.stall = mode, every, stall
        self.requests = 0
        self.injected = 0
        self.log: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FaultyS3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _fault(self, method: str, path: str) -> str | None:
        with self._lock:
            self.requests += 1
            self.log.append((method, path))
            fault = {
                "pass": None,
                "flaky": "slowdown" if self.requests % self.every == 0 else None,
                "denied": "denied",
                "stall": "stall",
            }[self.mode]
            self.injected += fault is not None
            return fault

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy._fault(self.command, self.path)
                if fault == "stall":
                    time.sleep(proxy.stall)
                    return
                if fault == "slowdown":
                    return self._error(503, "SlowDown", "Please reduce your request rate.")
                if fault == "denied":
                    return self._error(403, "AccessDenied", "Access Denied")
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
                response = upstream.getresponse()
                payload = response.read()
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                # a HEAD answer has no body but states the object's size: pass that through
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                upstream.close()

            def _error(self, status: int, code: str, message: str) -> None:
                payload = ERROR_BODY.format(code=code, message=message).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        return Handler
