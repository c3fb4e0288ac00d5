"""A loopback TCP proxy that can stop forwarding: a network partition that
keeps both sockets open (nothing is refused, nothing is answered)."""

from __future__ import annotations

import socket
import threading
from contextlib import suppress


class FreezableProxy:
    """Forwards 127.0.0.1:<port> to ``target``; :meth:`freeze` holds every byte."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        with suppress(OSError):
            self._listener.close()
        with self._lock:
            self._closed.set()
            for sock in self._sockets:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            with self._lock:
                if self._closed.is_set():
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                with suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            self._flowing.wait()
            if self._closed.is_set():
                return
            try:
                dst.sendall(data)
            except OSError:
                return
