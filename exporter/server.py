"""The exporter process: ``leasestore exporter`` or ``leasestore-exporter``.

Serves ``/metrics`` (prometheus-client's WSGI app on a private registry) and
a landing page at ``/``. Binds 127.0.0.1 by default. A non-loopback address
needs TLS (``--tls-cert``/``--tls-key``) and basic auth (``--basic-auth-user``
with the password in ``LEASESTORE_EXPORTER_PASSWORD`` or a file), or an
explicit ``--insecure``: queue names and failure counts are not for public
networks, and basic auth without TLS would send the password in clear.
Default port 10464: the 9100-9999 block of Prometheus's port allocations is
exhausted (new exporters register above 10000), and 9464, the first choice,
is the OpenTelemetry Prometheus exporter's default.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import ipaddress
import logging
import os
import socket
import ssl
import sys
import threading
from dataclasses import dataclass
from collections.abc import Callable, Iterable, Sequence
from socketserver import ThreadingMixIn
from typing import Any, NoReturn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from leasestore.errors import ConfigurationError, LeaseStoreError
from leasestore.metrics import DEFAULT_WINDOW_MINUTES

from .collector import StoreCollector

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 10464
PASSWORD_ENV = "LEASESTORE_EXPORTER_PASSWORD"

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
    metrics_app: WSGIApp = make_wsgi_app(registry)

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


@dataclass(frozen=True)
class BasicAuth:
    """One user and password; only the password's SHA-256 is kept in memory."""

    user: str
    password_sha256: bytes

    @classmethod
    def of(cls, user: str, password: str) -> BasicAuth:
        if not user or ":" in user or not password:
            raise ConfigurationError("basic auth needs a user without ':' and a non-empty password")
        return cls(user, hashlib.sha256(password.encode()).digest())

    def allows(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        # Compare digests in constant time so a timing probe learns nothing.
        user_ok = hmac.compare_digest(user.encode(), self.user.encode())
        password_ok = hmac.compare_digest(hashlib.sha256(password.encode()).digest(), self.password_sha256)
        return user_ok and password_ok


def require_auth(app: WSGIApp, auth: BasicAuth) -> WSGIApp:
    """Every path needs the credentials; a wrong or missing one gets 401."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if auth.allows(environ.get("HTTP_AUTHORIZATION")):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                            ("WWW-Authenticate", 'Basic realm="leasestore"')])
        return [b"unauthorized\n"]

    return guarded


@dataclass(frozen=True)
class TLSFiles:
    certfile: str
    keyfile: str

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"cannot load TLS certificate {self.certfile} / key {self.keyfile}: {exc}") from exc
        return context


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        if self.tls is None:
            return conn, addr
        # The handshake runs in the request thread (on first read), so a slow
        # or broken client cannot stall the accept loop.
        return self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that fails the TLS handshake or hangs up is its own problem.
        pass


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
                 window_minutes: float = DEFAULT_WINDOW_MINUTES, insecure: bool = False,
                 tls: TLSFiles | None = None, auth: BasicAuth | None = None) -> None:
        if not is_loopback(host) and not insecure and (tls is None or auth is None):
            raise ConfigurationError(
                f"refusing to serve /metrics on non-loopback address {host} without TLS and basic auth: "
                "pass --tls-cert/--tls-key and --basic-auth-user, or --insecure")
        tls_context = tls.context() if tls is not None else None
        self.collector = StoreCollector(db, window_minutes)
        self.registry = build_registry(self.collector)
        app = make_app(self.registry)
        if auth is not None:
            app = require_auth(app, auth)
        server_class: type[_ThreadingServer] = type(
            "_ExporterServer", (_ThreadingServer,),
            {"tls": tls_context, "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
        self.server = make_server(host, port, app, server_class, _QuietHandler)
        self.collector.prime()  # after the bind: a taken port fails at once
        self.scheme = "https" if tls_context is not None else "http"
        self.host, self.port = host, self.server.server_port
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def start(self) -> Exporter:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="leasestore-exporter")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for a serve loop that must be running
            self.server.shutdown()
            self._thread.join()
        self.server.server_close()
        self.collector.close()


class _OneLineErrors(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line like every other leasestore error; --help still shows the usage.
        self.exit(2, f"error: {message}\n")


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, not {port}")
    return port


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _OneLineErrors(prog="leasestore-exporter", description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None, help="SQLite path or SQLAlchemy URL (default: the store's rules)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--window", type=float, default=DEFAULT_WINDOW_MINUTES, help="metrics window, minutes")
    parser.add_argument("--tls-cert", help="PEM certificate: serve HTTPS")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--basic-auth-user", help=f"require this user; password from ${PASSWORD_ENV} "
                                                   "or --basic-auth-password-file")
    parser.add_argument("--basic-auth-password-file", help="file holding the basic-auth password")
    parser.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without TLS and auth")
    return parser.parse_args(argv)


def tls_from_args(args: argparse.Namespace) -> TLSFiles | None:
    if args.tls_cert is None and args.tls_key is None:
        return None
    if not (args.tls_cert and args.tls_key):
        raise ConfigurationError("--tls-cert and --tls-key go together")
    return TLSFiles(args.tls_cert, args.tls_key)


def auth_from_args(args: argparse.Namespace, env: dict[str, str] | os._Environ[str] = os.environ) -> BasicAuth | None:
    if args.basic_auth_user is None:
        if args.basic_auth_password_file:
            raise ConfigurationError("--basic-auth-password-file needs --basic-auth-user")
        return None
    # The password never goes on the command line, where `ps` would show it.
    if args.basic_auth_password_file:
        try:
            with open(args.basic_auth_password_file, encoding="utf-8") as f:
                password = f.read().rstrip("\r\n")
        except OSError as exc:
            raise ConfigurationError(f"cannot read the basic-auth password file: {exc.strerror}") from exc
    else:
        password = env.get(PASSWORD_ENV, "")
        if not password:
            raise ConfigurationError(f"--basic-auth-user needs ${PASSWORD_ENV} or --basic-auth-password-file")
    return BasicAuth.of(args.basic_auth_user, password)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        exporter = Exporter(args.db, args.host, args.port, args.window, args.insecure,
                            tls=tls_from_args(args), auth=auth_from_args(args))
    except (LeaseStoreError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"leasestore exporter on {exporter.scheme}://{exporter.host}:{exporter.port}/metrics", flush=True)
    try:
        exporter.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        exporter.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
