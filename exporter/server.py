"""The exporter process: ``leasestore exporter`` or ``leasestore-exporter``.

Serves ``/metrics`` (prometheus-client's WSGI app on a private registry) and
a landing page at ``/``. Binds 127.0.0.1 by default: ``/metrics`` is not meant
for public networks, and a non-loopback address needs ``--insecure``.
Default port 9464 sits outside the 9100-9999 range that public exporters
have claimed.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from leasestore.errors import ConfigurationError, LeaseStoreError
from leasestore.metrics import DEFAULT_WINDOW_MINUTES

from .collector import StoreCollector

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9464

LANDING_PAGE = b"""<!doctype html>
<html><head><title>leasestore exporter</title></head>
<body><h1>leasestore exporter</h1>
<p>Lease store health for Prometheus: <a href="/metrics">/metrics</a>.</p>
</body></html>
"""

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def build_registry(collector: StoreCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def make_app(registry: CollectorRegistry) -> WSGIApp:
    """``/`` is the landing page, ``/metrics`` the exposition, anything else 404."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [LANDING_PAGE]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics\n"]

    return app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # One line per scrape would drown the process's own logs.
        pass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback
                       for info in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


class Exporter:
    """A running exporter (used by ``main`` and by tests)."""

    def __init__(self, db: str | None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 window_minutes: float = DEFAULT_WINDOW_MINUTES, insecure: bool = False) -> None:
        if not is_loopback(host) and not insecure:
            raise ConfigurationError(
                f"refusing to serve /metrics on non-loopback address {host}: "
                "put it behind a TLS/auth proxy and pass --insecure")
        self.collector = StoreCollector(db, window_minutes)
        self.registry = build_registry(self.collector)
        server_class = _ThreadingServer
        if ":" in host:
            server_class = type("_ThreadingServer6", (_ThreadingServer,), {"address_family": socket.AF_INET6})
        self.server = make_server(host, port, make_app(self.registry), server_class, _QuietHandler)
        self.host, self.port = host, self.server.server_port
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def start(self) -> Exporter:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="leasestore-exporter")
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.collector.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="leasestore-exporter", description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None, help="SQLite path or SQLAlchemy URL (default: the store's rules)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--window", type=float, default=DEFAULT_WINDOW_MINUTES, help="metrics window, minutes")
    parser.add_argument("--insecure", action="store_true", help="allow a non-loopback bind")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        exporter = Exporter(args.db, args.host, args.port, args.window, args.insecure)
    except (LeaseStoreError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"leasestore exporter on http://{exporter.host}:{exporter.port}/metrics", flush=True)
    try:
        exporter.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        exporter.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
