"""A TCP proxy on loopback that can cut a connection mid-request: a dropped link, for
clients that must resume (tus)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class CuttingProxy:
    """Forwards to *upstream*; once ``cut_after`` bytes have gone upstream in total, the
    connection carrying them is closed both ways (once, then it forwards everything)."""

    def __init__(self, upstream: tuple[str, int], cut_after: int | None) -> None:
        self.upstream = upstream
        self.cut_after = cut_after
        self.sent_upstream = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            for source, target, counted in ((client, server, True), (server, client, False)):
                threading.Thread(
                    target=self._pump, args=(source, target, counted, (client, server)),
                    daemon=True,
                ).start()  # fmt: skip

    def _pump(
        self, source: socket.socket, target: socket.socket, counted: bool,
        pair: tuple[socket.socket, socket.socket],
    ) -> None:  # fmt: skip
        try:
            while data := source.recv(65536):
                if counted and self._should_cut(len(data)):
                    for sock in pair:
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
                    return
                target.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_WR)

    def _should_cut(self, size: int) -> bool:
        with self._lock:
            self.sent_upstream += size
            if self.cut_after is not None and self.sent_upstream >= self.cut_after:
                self.cut_after = None
                self.cuts += 1
                return True
            return False

    def close(self) -> None:
        self._listener.close()


@contextmanager
def cutting_proxy(url: str, cut_after: int | None) -> Iterator[CuttingProxy]:
    host, _, port = url.removeprefix("http://").partition(":")
    proxy = CuttingProxy((host, int(port)), cut_after)
    threading.Thread(target=proxy.serve, daemon=True).start()
    try:
        yield proxy
    finally:
        proxy.close()
