"""A local HTTP server on 127.0.0.1 serving one file, ``/data.bin``, that misbehaves on demand
(cut bodies, ignored ranges, error statuses, delays): downloads are tested against it."""

from __future__ import annotations

import hashlib
import http.server
import random
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# Deterministic, incompressible payload, large enough to span several read chunks.
PAYLOAD = random.Random(1234).randbytes(2 * 1024 * 1024 + 12345)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@dataclass
class ServerState:
    """What the handler serves and how it misbehaves; the tests flip these between calls."""

    payload: bytes = PAYLOAD
    cut_after: int | None = None  # send only this many body bytes, then drop the connection
    ignore_range: bool = False  # answer 200 with the whole file even when asked for a range
    status: int | None = None  # answer with this error status instead of the file
    delay: float = 0.0  # sleep before answering (to trigger client timeouts)
    requests: list[dict[str, str]] = field(default_factory=list)


class FileHandler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.0: the connection closes after every response, so a cut body ends in EOF.
    protocol_version = "HTTP/1.0"

    def log_message(self, fmt: str, *args: object) -> None:
        pass  # keep pytest output clean

    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        state.requests.append(dict(self.headers.items()))
        if state.delay:
            time.sleep(state.delay)
        if self.path != "/data.bin" or state.status is not None:
            code = state.status or 404
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = state.payload
        size = len(data)
        start = 0
        status = 200
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and not state.ignore_range:
            start = int(match.group(1))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        if state.cut_after is not None:
            body = body[: state.cut_after]
        self.wfile.write(body)
        self.wfile.flush()


@dataclass
class FileServer:
    state: ServerState
    base: str

    @property
    def url(self) -> str:
        return f"{self.base}/data.bin"


@contextmanager
def serve_file() -> Iterator[FileServer]:
    """The server, running in a thread until the block ends."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FileHandler)
    httpd.daemon_threads = True
    httpd.state = ServerState()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        host, port = httpd.server_address[:2]
        yield FileServer(httpd.state, f"http://{host}:{port}")  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
