"""The exporter process: ``leasestore exporter`` or ``leasestore-exporter``.

Serves ``/metrics`` (prometheus-client's WSGI app on a private registry) and
a landing page at ``/``. Binds 127.0.0.1 by default. A non-loopback address
needs TLS and basic auth, or an explicit ``--insecure``: queue names and
failure counts are not for public networks, and basic auth without TLS would
send the password in clear.

TLS and users come from ``--web.config.file``, the web-configuration YAML that
Prometheus and its exporters share (``tls_server_config``, ``basic_auth_users``
with bcrypt hashes), re-read when the file or a certificate it names changes
and on SIGHUP. ``--tls-cert``/``--tls-key``/``--basic-auth-user`` are
shorthands for one certificate and one user; the two forms are exclusive.
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
import re
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any, NoReturn, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import bcrypt
import yaml
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from leasestore.errors import ConfigurationError, LeaseStoreError
from leasestore.metrics import DEFAULT_WINDOW_MINUTES

from .collector import StoreCollector

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 10464
PASSWORD_ENV = "LEASESTORE_EXPORTER_PASSWORD"

log = logging.getLogger("leasestore.exporter")

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


# --- Basic auth ---------------------------------------------------------------------------------


class Authenticator(Protocol):
    def allows(self, header: str | None) -> bool: ...


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """``(user, password)`` from an ``Authorization: Basic ...`` header, else None."""
    if not header or not header.startswith("Basic "):
        return None
    try:
        user, sep, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


@dataclass(frozen=True)
class BasicAuth:
    """One user and password (the ``--basic-auth-user`` shorthand); only the password's
    SHA-256 is kept in memory."""

    user: str
    password_sha256: bytes

    @classmethod
    def of(cls, user: str, password: str) -> BasicAuth:
        if not user or ":" in user or not password:
            raise ConfigurationError("basic auth needs a user without ':' and a non-empty password")
        return cls(user, hashlib.sha256(password.encode()).digest())

    def allows(self, header: str | None) -> bool:
        user, password = basic_credentials(header) or ("", "")
        # Compare digests in constant time so a timing probe learns nothing.
        user_ok = hmac.compare_digest(user.encode(), self.user.encode())
        password_ok = hmac.compare_digest(hashlib.sha256(password.encode()).digest(), self.password_sha256)
        return user_ok and password_ok and bool(password)


# What htpasswd -B, Go's and Python's bcrypt write: $2a$/$2b$/$2y$, a two-digit cost, 53 characters
# of salt and hash in bcrypt's base64.
BCRYPT_HASH = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
# Checked for unknown users, so that a wrong user costs as much time as a wrong password.
_DECOY_HASH = b"$2b$10$7jPLCLPw0kK1GjqDhRft1.F/jrNpC12REgNIrey107GWIpGzvWvkC"


class BcryptCache:
    """Results of bcrypt checks keyed by a digest of (user, hash, password).

    A scrape every 15 s would otherwise spend a bcrypt (~50 ms at cost 10) each time. The key
    holds the hash, so changing a password in the file makes its old entries unreachable.
    Checks run one at a time: a flood of guesses costs one core, not all of them.
    """

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._results: dict[bytes, bool] = {}
        self._lock = threading.Lock()
        self._bcrypt = threading.Lock()

    def check(self, user: str, hashed: bytes, password: str) -> bool:
        key = hashlib.sha256(b"\0".join([user.encode(), hashed, password.encode()])).digest()
        with self._lock:
            cached = self._results.get(key)
        if cached is not None:
            return cached
        with self._bcrypt:
            try:
                ok = bcrypt.checkpw(password.encode(), hashed)
            except ValueError:  # e.g. a password longer than bcrypt's 72 bytes
                ok = False
        with self._lock:
            if len(self._results) >= self._size:
                self._results.clear()
            self._results[key] = ok
        return ok


@dataclass(frozen=True)
class BcryptUsers:
    """``basic_auth_users`` of a web config file: user -> bcrypt hash."""

    users: Mapping[str, bytes]
    cache: BcryptCache = field(default_factory=BcryptCache, compare=False)

    def allows(self, header: str | None) -> bool:
        credentials = basic_credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self.users.get(user)
        ok = self.cache.check(user, hashed if hashed is not None else _DECOY_HASH, password)
        return ok and hashed is not None


# --- TLS ----------------------------------------------------------------------------------------

TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# exporter-toolkit's client_auth_type values that Python's TLS can honour. RequestClientCert and
# RequireAnyClientCert accept a certificate without verifying it, which OpenSSL here cannot do.
CLIENT_AUTH_TYPES = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                     "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
UNVERIFIED_CLIENT_AUTH_TYPES = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")


@dataclass(frozen=True)
class TLSFiles:
    """A server certificate and key; optionally a CA that client certificates must chain to."""

    certfile: str
    keyfile: str
    client_ca_file: str | None = None
    client_auth_type: str = "NoClientCert"
    min_version: str = "TLS12"
    max_version: str = "TLS13"

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(f for f in (self.certfile, self.keyfile, self.client_ca_file) if f)

    def context(self) -> ssl.SSLContext:
        if self.client_auth_type in UNVERIFIED_CLIENT_AUTH_TYPES:
            raise ConfigurationError(
                f"client_auth_type {self.client_auth_type} is not supported (it accepts unverified client "
                "certificates): use VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file")
        if self.client_auth_type not in CLIENT_AUTH_TYPES:
            raise ConfigurationError(f"invalid client_auth_type {self.client_auth_type!r}: one of "
                                     + ", ".join(CLIENT_AUTH_TYPES))
        verify = CLIENT_AUTH_TYPES[self.client_auth_type]
        if self.client_ca_file and verify == ssl.CERT_NONE:
            raise ConfigurationError("client_ca_file is set but client_auth_type is NoClientCert: "
                                     "use VerifyClientCertIfGiven or RequireAndVerifyClientCert")
        if verify != ssl.CERT_NONE and not self.client_ca_file:
            raise ConfigurationError(f"client_auth_type {self.client_auth_type} needs client_ca_file")
        versions = []
        for name in (self.min_version, self.max_version):
            if name not in TLS_VERSIONS:
                raise ConfigurationError(f"unknown TLS version {name!r}: one of {', '.join(TLS_VERSIONS)}")
            versions.append(TLS_VERSIONS[name])
        # Not ssl.create_default_context(CLIENT_AUTH): that trusts the system's CAs for client
        # certificates, so any publicly signed certificate would pass RequireAndVerifyClientCert.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version, context.maximum_version = versions
        for role, path in (("certificate", self.certfile), ("key", self.keyfile)):
            if not os.access(path, os.R_OK):
                raise ConfigurationError(f"cannot read TLS {role} {path}: {_why_unreadable(path)}")
        try:
            context.load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"cannot load TLS certificate {self.certfile} / key {self.keyfile}: {_one_line(exc)}") from exc
        if self.client_ca_file:
            try:
                context.load_verify_locations(cafile=self.client_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(
                    f"cannot load client_ca_file {self.client_ca_file}: {_one_line(exc)}") from exc
        context.verify_mode = verify
        return context


def _why_unreadable(path: str) -> str:
    try:
        with open(path, "rb"):
            return "unreadable"
    except OSError as exc:
        return exc.strerror or str(exc)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# --- Web configuration --------------------------------------------------------------------------

# The headers exporter-toolkit lets a web config set, with the values it accepts (None: any).
HTTP_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None, "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"), "X-XSS-Protection": None, "Content-Security-Policy": None,
}
TLS_FIELDS = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version", "max_version"}
# Part of the format, not served by this exporter: refused by name rather than ignored.
UNSUPPORTED_FIELDS = {
    "tls_server_config": {"cert", "key", "client_ca", "cipher_suites", "curve_preferences",
                          "prefer_server_cipher_suites", "client_allowed_sans"},
    "": {"rate_limit"},
}


@dataclass(frozen=True)
class WebConfig:
    """What the server applies to a connection: TLS (or none), the users (or none), extra headers."""

    tls: TLSFiles | None = None
    auth: Authenticator | None = None
    headers: tuple[tuple[str, str], ...] = ()
    tls_context: ssl.SSLContext | None = field(default=None, compare=False)

    @classmethod
    def of(cls, tls: TLSFiles | None, auth: Authenticator | None,
           headers: tuple[tuple[str, str], ...] = ()) -> WebConfig:
        return cls(tls, auth, headers, tls.context() if tls is not None else None)

    @property
    def files(self) -> tuple[str, ...]:
        return self.tls.files if self.tls is not None else ()


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigurationError(f"{where} must be a mapping, not {type(value).__name__}")
    return value


def _known(section: dict[str, Any], name: str, allowed: set[str]) -> None:
    for key in section:
        if key in UNSUPPORTED_FIELDS.get(name, set()):
            raise ConfigurationError(f"{(name + '.') if name else ''}{key} is not supported by leasestore-exporter")
        if key not in allowed:
            raise ConfigurationError(f"unknown field {key!r} in {name or 'the top level'}")


def _string(section: dict[str, Any], key: str, where: str) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"{where}.{key} must be a string")
    return value


def parse_web_config(text: str, directory: str, cache: BcryptCache | None = None) -> WebConfig:
    """A web config's text to a ``WebConfig``; relative file names are relative to ``directory``
    (the config file's, as exporter-toolkit does). Raises ``ConfigurationError`` (one line)."""
    try:
        doc = _mapping(yaml.safe_load(text), "the file")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigurationError(f"not valid YAML{where}: {getattr(exc, 'problem', None) or _one_line(exc)}") from exc
    _known(doc, "", {"tls_server_config", "http_server_config", "basic_auth_users"})

    tls_section = _mapping(doc.get("tls_server_config"), "tls_server_config")
    _known(tls_section, "tls_server_config", TLS_FIELDS)
    names = {key: _string(tls_section, key, "tls_server_config") for key in TLS_FIELDS}
    tls = None
    # As exporter-toolkit: a certificate, key or client-auth field turns TLS on; then cert and key must be there.
    if any(names[key] for key in ("cert_file", "key_file", "client_ca_file", "client_auth_type")):
        if not names["cert_file"]:
            raise ConfigurationError("tls_server_config needs cert_file")
        if not names["key_file"]:
            raise ConfigurationError("tls_server_config needs key_file")

        def path(key: str) -> str | None:
            name = names[key]
            return os.path.join(directory, name) if name else None

        tls = TLSFiles(str(path("cert_file")), str(path("key_file")), path("client_ca_file"),
                       names["client_auth_type"] or "NoClientCert",
                       names["min_version"] or "TLS12", names["max_version"] or "TLS13")

    http_section = _mapping(doc.get("http_server_config"), "http_server_config")
    _known(http_section, "http_server_config", {"http2", "headers"})
    if not isinstance(http_section.get("http2", True), bool):
        raise ConfigurationError("http_server_config.http2 must be true or false")
    headers = []
    for name, value in _mapping(http_section.get("headers"), "http_server_config.headers").items():
        if name not in HTTP_HEADERS:
            raise ConfigurationError(f"HTTP header {name!r} cannot be configured: one of {', '.join(HTTP_HEADERS)}")
        allowed = HTTP_HEADERS[name]
        if not isinstance(value, str) or (allowed is not None and value not in allowed):
            raise ConfigurationError(f"invalid value for HTTP header {name}: {value!r}"
                                     + (f" (one of {', '.join(allowed)})" if allowed else ""))
        if value:
            headers.append((name, value))

    users: dict[str, bytes] = {}
    for user, hashed in _mapping(doc.get("basic_auth_users"), "basic_auth_users").items():
        if not isinstance(user, str) or not user or ":" in user:
            raise ConfigurationError(f"basic_auth_users: {user!r} is not a user name (a non-empty string without ':')")
        match = BCRYPT_HASH.fullmatch(hashed) if isinstance(hashed, str) else None
        if match is None or not 4 <= int(match.group(1)) <= 31:
            raise ConfigurationError(
                f"basic_auth_users: the password of {user!r} is not a bcrypt hash ($2a$, $2b$ or $2y$, "
                "cost 04-31, 60 characters; make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)")
        users[user] = hashed.encode()
    auth = BcryptUsers(users, cache or BcryptCache()) if users else None
    return WebConfig.of(tls, auth, tuple(headers))


class WebSource(Protocol):
    """Where the server gets its ``WebConfig`` for each connection; None means "unusable": refuse."""

    @property
    def tls(self) -> bool: ...

    def current(self) -> WebConfig | None: ...


class FixedWeb:
    """The shorthand flags: one ``WebConfig`` for the process's life."""

    def __init__(self, config: WebConfig) -> None:
        self.config = config

    @property
    def tls(self) -> bool:
        return self.config.tls is not None

    def current(self) -> WebConfig | None:
        return self.config


Signature = tuple[tuple[int, int, int] | None, ...]


class WebConfigFile:
    """A ``--web.config.file``: loaded at start (errors raise), re-read when the file or a
    certificate, key or CA file it names changes (checked on each new connection), or when
    ``request_reload`` is called (SIGHUP).

    A reload that fails leaves the exporter refusing every request (connection closed under TLS,
    500 without) and logs one line, until the file is fixed: a broken file must not keep an old
    password working. While it is broken every new connection tries again (a certificate that
    appears at the named path is picked up at once), logging only a new error. Turning TLS on or
    off needs a restart, and ``check`` (the non-loopback rule) applies to every reload.
    """

    def __init__(self, path: str, check: Callable[[WebConfig], None] = lambda config: None) -> None:
        self.path = path
        self._check = check
        self._cache = BcryptCache()
        self._lock = threading.Lock()
        self._reload_requested = False
        self._last_error: str | None = None
        self._watched: tuple[str, ...] = (path,)
        self._signature = self._stat(self._watched)
        config = self._load()
        self._tls = config.tls is not None
        self._config: WebConfig | None = config
        self._watch(config)

    @property
    def tls(self) -> bool:
        return self._tls

    @staticmethod
    def _stat(names: tuple[str, ...]) -> Signature:
        signature: list[tuple[int, int, int] | None] = []
        for name in names:
            try:
                st = os.stat(name)
            except OSError:
                signature.append(None)
            else:
                signature.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(signature)

    def _load(self) -> WebConfig:
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigurationError(f"cannot read web config {self.path}: {exc.strerror or exc}") from exc
        try:
            config = parse_web_config(text, os.path.dirname(os.path.abspath(self.path)), self._cache)
            self._check(config)
        except ConfigurationError as exc:
            raise ConfigurationError(f"web config {self.path}: {exc}") from exc
        return config

    def _watch(self, config: WebConfig) -> None:
        # The signature taken before the file was read: a change made while reading shows up later.
        watched = (self.path, *config.files)
        if watched != self._watched:
            self._watched, self._signature = watched, self._stat(watched)

    def current(self) -> WebConfig | None:
        with self._lock:
            signature = self._stat(self._watched)
            if self._reload_requested:
                self._reload("SIGHUP", signature)
            elif signature != self._signature:
                self._reload("a watched file changed", signature)
            elif self._config is None:
                self._reload("retry while broken", signature)
            return self._config

    def request_reload(self) -> None:
        """From a signal handler: reload now in a thread, or at the latest on the next connection."""
        self._reload_requested = True
        threading.Thread(target=self._reload_if_requested, name="web-config-reload", daemon=True).start()

    def _reload_if_requested(self) -> None:
        with self._lock:
            if self._reload_requested:
                self._reload("SIGHUP", self._stat(self._watched))

    def _reload(self, reason: str, signature: Signature) -> None:
        self._reload_requested = False
        self._signature = signature
        try:
            config = self._load()
            if (config.tls is not None) != self._tls:
                raise ConfigurationError(f"web config {self.path}: turning TLS "
                                         f"{'on' if config.tls else 'off'} needs a restart")
        except ConfigurationError as exc:
            self._config = None
            if str(exc) != self._last_error:
                log.error("%s; refusing every request until it is fixed", exc)
            self._last_error = str(exc)
            return
        self._config, self._last_error = config, None
        self._watch(config)
        log.info("web config %s reloaded (%s)", self.path, reason)


def guard(app: WSGIApp, web: WebSource) -> WSGIApp:
    """Applies the current web config to each request: users (401 without the right password)
    and headers; a web config that failed to reload answers 500."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        config = web.current()
        if config is None:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"the exporter's web config is unusable: see its log\n"]
        extra = list(config.headers)
        if config.auth is not None and not config.auth.allows(environ.get("HTTP_AUTHORIZATION")):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                ("WWW-Authenticate", 'Basic realm="leasestore"'), *extra])
            return [b"unauthorized\n"]
        if not extra:
            return app(environ, start_response)

        def start_with_headers(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, *extra], exc_info)

        return app(environ, start_with_headers)

    return guarded


# --- Server -------------------------------------------------------------------------------------


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    web: WebSource

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        if not self.web.tls:
            return conn, addr
        config = self.web.current()  # a changed file is re-read here, before the handshake
        if config is None or config.tls_context is None:
            conn.close()
            raise OSError("web config unusable")  # socketserver drops the connection and goes on
        # The handshake runs in the request thread (on first read), so a slow
        # or broken client cannot stall the accept loop.
        return config.tls_context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that fails the TLS handshake or hangs up is its own problem.
        pass


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the stdlib's signature
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


def exposure_check(host: str, insecure: bool) -> Callable[[WebConfig], None]:
    """Off loopback, a config needs TLS and users unless ``--insecure``."""

    def check(config: WebConfig) -> None:
        if not is_loopback(host) and not insecure and (config.tls is None or config.auth is None):
            raise ConfigurationError(
                f"refusing to serve /metrics on non-loopback address {host} without TLS and basic auth: "
                "give tls_server_config and basic_auth_users in --web.config.file (or --tls-cert/--tls-key "
                "and --basic-auth-user), or pass --insecure")

    return check


class Exporter:
    """A running exporter (used by ``main`` and by tests)."""

    def __init__(self, db: str | None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 window_minutes: float = DEFAULT_WINDOW_MINUTES, insecure: bool = False,
                 tls: TLSFiles | None = None, auth: BasicAuth | None = None,
                 web_config_file: str | None = None) -> None:
        check = exposure_check(host, insecure)
        self.web: FixedWeb | WebConfigFile
        if web_config_file is not None:
            if tls is not None or auth is not None:
                raise ConfigurationError("--web.config.file replaces --tls-cert/--tls-key/--basic-auth-user: "
                                         "give one or the other")
            self.web = WebConfigFile(web_config_file, check)
        else:
            check(WebConfig(tls, auth))  # before loading anything
            self.web = FixedWeb(WebConfig.of(tls, auth))
        self.collector = StoreCollector(db, window_minutes)
        self.registry = build_registry(self.collector)
        app = guard(make_app(self.registry), self.web)
        server_class: type[_ThreadingServer] = type(
            "_ExporterServer", (_ThreadingServer,),
            {"web": self.web, "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
        self.server = make_server(host, port, app, server_class, _QuietHandler)
        self.collector.prime()  # after the bind: a taken port fails at once
        self.scheme = "https" if self.web.tls else "http"
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
    parser.add_argument("--web.config.file", "--web-config-file", dest="web_config_file", metavar="FILE",
                        help="Prometheus exporter web config (YAML: tls_server_config, basic_auth_users with "
                             "bcrypt hashes); re-read on change and on SIGHUP; excludes the four flags below")
    parser.add_argument("--tls-cert", help="shorthand: PEM certificate, serve HTTPS")
    parser.add_argument("--tls-key", help="shorthand: PEM private key of --tls-cert")
    parser.add_argument("--basic-auth-user", help=f"shorthand: require this user; password from ${PASSWORD_ENV} "
                                                   "or --basic-auth-password-file")
    parser.add_argument("--basic-auth-password-file", help="file holding the basic-auth password")
    parser.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without TLS and auth")
    return parser.parse_args(argv)


SHORTHAND_FLAGS = (("--tls-cert", "tls_cert"), ("--tls-key", "tls_key"), ("--basic-auth-user", "basic_auth_user"),
                   ("--basic-auth-password-file", "basic_auth_password_file"))


def check_exclusive(args: argparse.Namespace) -> None:
    given = [flag for flag, dest in SHORTHAND_FLAGS if getattr(args, dest) is not None]
    if args.web_config_file is not None and given:
        raise ConfigurationError(f"--web.config.file and {'/'.join(given)} are exclusive: "
                                 "put TLS and users in the web config file, or use the flags alone")


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
        check_exclusive(args)
        exporter = Exporter(args.db, args.host, args.port, args.window, args.insecure,
                            tls=tls_from_args(args), auth=auth_from_args(args), web_config_file=args.web_config_file)
    except (LeaseStoreError, OSError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    web = exporter.web
    if threading.current_thread() is threading.main_thread():
        # SIGHUP reloads, as across Prometheus; without a web config file it must not end the process.
        if isinstance(web, WebConfigFile):
            signal.signal(signal.SIGHUP, lambda signum, frame: web.request_reload())
            log.info("web config %s: re-read on change and on SIGHUP", web.path)
        else:
            signal.signal(signal.SIGHUP, lambda signum, frame: log.info(
                "SIGHUP: nothing to reload (the shorthand flags are read once; use --web.config.file)"))
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
