"""A loopback HTTP proxy that loses the node's first answers: the request reached the node
(and may have been stored), the client sees a dropped connection, as after a crash or a
network cut between the two."""

from __future__ import annotations

import socket
import threading
from types import TracebackType


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


class LossyProxy:
    """Forwards each request (one per connection) to ``127.0.0.1:target``; the answers to the
    first ``lose`` requests are read from the node and dropped. ``requests`` keeps every
    request head as received."""

    def __init__(self, target: int, *, lose: int = 1) -> None:
        self.target = target
        self.lose = lose
        self.requests: list[bytes] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LossyProxy:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                request = _read_request(conn)
                self.requests.append(request.partition(b"\r\n\r\n")[0])
                # One request per connection keeps the proxy simple.
                request = request.replace(b"Connection: keep-alive", b"Connection: close")
                with socket.create_connection(("127.0.0.1", self.target), timeout=10) as up:
                    up.sendall(request)
                    answer = b""
                    while chunk := up.recv(65536):
                        answer += chunk
                        if _complete(answer):
                            break
                if self.lose > 0:
                    self.lose -= 1
                    continue  # the node answered; the client never hears it
                conn.sendall(answer)


def _complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False
