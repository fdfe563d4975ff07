"""Real transport faults for tests: a loopback HTTP proxy in front of a real service (the
registry, the Docker engine's socket) that fails chosen requests and forwards the rest."""

import contextlib
import json
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

Upstream = tuple[str, int] | str  # (host, port), or the path of a unix socket


def _connect(upstream: Upstream) -> socket.socket:
    if isinstance(upstream, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(upstream)
        return sock
    return socket.create_connection(upstream)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy src to dst until either side ends, then shut both down."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


Match = Callable[[str, str, bytes], bool]  # (method, request target, body) -> fail it?


def any_request(method: str, target: str, body: bytes) -> bool:
    return True


@dataclass
class _Fault:
    match: Match
    remaining: int
    response: bytes | None  # None: reset the connection instead of answering


class HttpFaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1:<port> in front of `upstream` that fails the requests
    a fault matches (answers them itself and closes, or resets the connection) and forwards
    everything else.

    Request heads are parsed client -> upstream (keep-alive: several requests per
    connection); responses are piped back raw (chunked, streamed). A connection is piped
    raw both ways after an Upgrade or a chunked request body, and from the start when it
    does not speak HTTP (e.g. a TLS handshake that a registry client tries first).
    """

    def __init__(self, upstream: Upstream, port: int = 0):
        self.upstream = upstream
        self.injected: list[str] = []  # "METHOD target" of each request answered with a fault
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", port))  # 0: any free port
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def fail(self, status: str, body: dict, times: int = 1, match: Match = any_request) -> None:
        """Answer the next `times` matching requests with `status` (e.g. "503 Service
        Unavailable") and the JSON `body`, closing their connection."""
        payload = json.dumps(body).encode()
        response = (
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        ).encode() + payload
        self._add(_Fault(match, times, response))

    def reset(self, times: int = 1, match: Match = any_request) -> None:
        """Reset the connection of the next `times` matching requests (the client sees a
        connection reset, as with a service restarting behind a load balancer)."""
        self._add(_Fault(match, times, None))

    def clear(self) -> None:
        """Forward everything from now on."""
        with self._lock:
            self._faults.clear()

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take(self, method: str, target: str, body: bytes) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.match(method, target, body):
                    fault.remaining -= 1
                    self.injected.append(f"{method} {target}")
                    return fault
        return None

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        upstream = _connect(self.upstream)
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        try:
            self._forward_requests(client, upstream)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _forward_requests(self, client: socket.socket, upstream: socket.socket) -> None:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                data = client.recv(65536)
                if not data:
                    return
                buffer += data
                if not buffer[:1].isupper():  # not an HTTP request line: pipe raw
                    upstream.sendall(buffer)
                    _pipe(client, upstream)
                    return
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method, target = lines[0].split(" ")[:2]
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:])
            }
            length = int(headers.get("content-length", "0"))
            while len(buffer) < length:
                data = client.recv(65536)
                if not data:
                    return
                buffer += data
            body, buffer = buffer[:length], buffer[length:]
            fault = self._take(method, target, body)
            if fault is not None and fault.response is None:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                return
            if fault is not None:
                client.sendall(fault.response)
                return
            upstream.sendall(head + b"\r\n\r\n" + body)
            raw = "upgrade" in headers or "chunked" in headers.get("transfer-encoding", "")
            if raw:
                upstream.sendall(buffer)
                _pipe(client, upstream)
                return
