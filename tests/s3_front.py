"""An HTTP front for the moto S3 server: the endpoint sqz talks to in the S3 fault tests.

Forwards every request to moto unchanged. It can answer the first N requests with an S3
error instead (``fail_first``, e.g. 503 SlowDown), and it can be stopped and started
again on the same port: stopping closes the listening socket and every open connection,
so clients see what an S3 server's restart looks like to them (connections reset, then
refused), while the objects behind it stay, as on a real store's disks.

Run as a process: ``python tests/s3_front.py LISTEN_PORT TARGET_URL`` (stopped by its pid).
"""

from __future__ import annotations

import http.client
import http.server
import socket
import sys
import threading
from urllib.parse import urlparse

_HOP_BY_HOP = {"expect", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class S3Front:
    def __init__(self, port: int, target_url: str, *, fail_first: int = 0, fail_status: int = 503,
                 fail_code: str = "SlowDown") -> None:  # fmt: skip
        self.port, self.target = port, urlparse(target_url)
        self.fail_left, self.fail_status, self.fail_code = fail_first, fail_status, fail_code
        self.requests = 0  # every request received, failed or forwarded
        self.cut = 0  # connections open (keep-alive or mid-request) when stop() reset them
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "S3Front":
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with front._lock:
                    front._connections.add(self.connection)

            def finish(self) -> None:
                with front._lock:
                    front._connections.discard(self.connection)
                super().finish()

            def _body(self) -> tuple[bytes, bool]:
                """The request body as received (HTTP chunk framing kept) and whether chunked."""
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    raw = []
                    while True:
                        line = self.rfile.readline()
                        raw.append(line)
                        size = int(line.split(b";")[0].strip(), 16)
                        if size == 0:
                            while True:  # trailers, then the blank line
                                line = self.rfile.readline()
                                raw.append(line)
                                if line in (b"\r\n", b"\n", b""):
                                    return b"".join(raw), True
                        raw.append(self.rfile.read(size + 2))
                return self.rfile.read(int(self.headers.get("Content-Length") or 0)), False

            def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    # A HEAD answer has no body but keeps the object's Content-Length.
                    if name.lower() not in _HOP_BY_HOP and (name.lower() != "content-length" or self.command == "HEAD"):
                        self.send_header(name, value)
                if self.command != "HEAD" or not any(n.lower() == "content-length" for n, _ in headers):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                body, chunked = self._body()
                with front._lock:
                    front.requests += 1
                    fail = front.fail_left > 0
                    front.fail_left -= fail
                if fail:
                    error = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{front.fail_code}</Code>'
                             f"<Message>injected by the test front</Message></Error>").encode()  # fmt: skip
                    self._answer(front.fail_status, [("Content-Type", "application/xml")], error)
                    return
                upstream = http.client.HTTPConnection(front.target.hostname, front.target.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    if chunked:  # forwarded byte for byte: S3's aws-chunked payloads sit inside the framing
                        headers["Transfer-Encoding"] = "chunked"
                    else:
                        headers["Content-Length"] = str(len(body))
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    self._answer(response.status, response.getheaders(), data)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

            def log_message(self, *args: object) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            allow_reuse_address = True  # restart on the same port at once
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a connection cut by stop(): the client sees it, the test log need not

        self._server = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Refuse new connections and reset the open ones (keep-alive included)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            self.cut += len(self._connections)
            for connection in list(self._connections):
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                connection.close()
            self._connections.clear()
        self._server = None


if __name__ == "__main__":
    S3Front(int(sys.argv[1]), sys.argv[2]).start()
    threading.Event().wait()  # serve until killed
