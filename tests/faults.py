"""Real transport faults for tests: a loopback TCP proxy that drops its first connections."""

import contextlib
import socket
import struct
import threading


class FlakyProxy:
    """Forwards 127.0.0.1:<port> to `upstream`, closing the first `drop` connections at once
    (the client sees a reset / EOF, as with a registry restarting behind a load balancer)."""

    def __init__(self, upstream: tuple[str, int], drop: int):
        self.upstream, self.remaining, self.dropped = upstream, drop, 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.remaining > 0:
                self.remaining -= 1
                self.dropped += 1
                reset_on_close = struct.pack("ii", 1, 0)
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, reset_on_close)
                client.close()
                continue
            upstream = socket.create_connection(self.upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closing = True
        self._server.close()
