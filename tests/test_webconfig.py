"""``--web.config.file``: the exporter web configuration that Prometheus and its exporters share
(exporter-toolkit's format), on real exporter processes with real TLS (openssl certificates) and
bcrypt hashes, spoken to with the stdlib's HTTP client; ``promtool check web-config`` judges the
same files, so the format is the ecosystem's and not a look-alike.

Prometheus itself scraping an exporter configured this way is in test_prometheus_e2e.py.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from exporter.server import BcryptCache, parse_web_config
from exporter.server import main as server_main
from leasestore.errors import ConfigurationError
from tests.conftest import require_binary
from tests.prometheus import self_signed_cert, stop_process
from tests.scenarios import breach_some_thresholds

ROOT = Path(__file__).resolve().parent.parent
USER = "prometheus"


def bcrypt_hash(password: str) -> str:
    # Cost 4 keeps the tests quick; the README's command makes cost 10.
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def write_config(path: Path, *, tls: bool = True, users: dict[str, str] | None = None, **extra: Any) -> Path:
    """A web config next to ``cert.pem``/``key.pem`` in the same folder (relative names, as
    exporter-toolkit resolves them against the config file's folder)."""
    doc: dict[str, Any] = {}
    if tls:
        doc["tls_server_config"] = {"cert_file": "cert.pem", "key_file": "key.pem"}
    if users:
        doc["basic_auth_users"] = users
    doc.update(extra)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class ExporterProcess:
    """``python -m exporter.server`` on a free port (``--port 0``, the port read from its first line)."""

    def __init__(self, folder: Path, *args: str, db: Path | None = None) -> None:
        self.folder = folder
        self.out = folder / "exporter.out"
        self.err = folder / "exporter.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "exporter.server", "--db", str(db or folder / "store.db"), "--port", "0",
                 *args], stdout=out, stderr=err, cwd=ROOT)
        self.url = ""

    def wait_ready(self, timeout: float = 20) -> ExporterProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(r"on (https?://\S+)/metrics", self.out.read_text())
            if match:
                self.url = match.group(1).replace("0.0.0.0", "127.0.0.1")
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited with {self.proc.returncode}: {self.err.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"exporter not ready after {timeout} s: {self.err.read_text()}")

    def wait_exit(self, timeout: float = 20) -> tuple[int, list[str]]:
        code = self.proc.wait(timeout)
        return code, self.err.read_text().strip().splitlines()

    def log(self) -> str:
        return self.err.read_text()

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def exporters() -> Iterator[list[ExporterProcess]]:
    started: list[ExporterProcess] = []
    yield started
    for exporter in started:
        exporter.stop()


def start(exporters: list[ExporterProcess], folder: Path, *args: str, db: Path | None = None) -> ExporterProcess:
    exporter = ExporterProcess(folder, *args, db=db)
    exporters.append(exporter)
    return exporter


def get(url: str, user: str | None = None, password: str = "", cafile: Path | None = None,
        client_cert: tuple[Path, Path] | None = None) -> tuple[int, bytes, Any]:
    """Status, body and headers of a GET; a refused TLS connection raises OSError."""
    request = urllib.request.Request(url)
    if user is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    context = None
    if url.startswith("https:"):
        context = ssl.create_default_context(cafile=str(cafile))
        if client_cert is not None:
            context.load_cert_chain(*map(str, client_cert))
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as resp:
            return int(resp.status), resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


@pytest.fixture
def certs(tmp_path: Path) -> tuple[Path, Path]:
    require_binary("openssl")
    return self_signed_cert(tmp_path)


def promtool_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_binary("promtool"), "check", "web-config", str(path)],
                          check=False, capture_output=True, text=True)


# --- Real processes -----------------------------------------------------------------------------


def test_good_config_tls_and_basic_auth(tmp_path: Path, certs: tuple[Path, Path],
                                        exporters: list[ExporterProcess]) -> None:
    """TLS and a bcrypt user from the file: off loopback is allowed, the scrape works with the
    password, every path needs it, plain HTTP gets nothing, and promtool accepts the same file."""
    cert, _ = certs
    breach_some_thresholds(str(tmp_path / "store.db"))
    config = write_config(tmp_path / "web.yml", users={USER: bcrypt_hash("s3cret")},
                          http_server_config={"headers": {"X-Content-Type-Options": "nosniff"}})
    checked = promtool_check(config)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    exporter = start(exporters, tmp_path, "--host", "0.0.0.0", "--web.config.file", str(config)).wait_ready()
    assert exporter.url.startswith("https://")
    status, body, headers = get(exporter.url + "/metrics", USER, "s3cret", cafile=cert)
    assert status == 200 and b"leasestore_dead_letters_open 2.0" in body
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert get(exporter.url + "/", USER, "s3cret", cafile=cert)[0] == 200
    for user, password in ((None, ""), ("someone", "s3cret"), (USER, "")):
        status, _, headers = get(exporter.url + "/metrics", user, password, cafile=cert)
        assert status == 401 and headers["WWW-Authenticate"] == 'Basic realm="leasestore"', (user, password)
    with pytest.raises(OSError):  # plain HTTP on the TLS port gets no answer
        get(exporter.url.replace("https:", "http:") + "/metrics", USER, "s3cret")
    assert get(exporter.url + "/metrics", USER, "s3cret", cafile=cert)[0] == 200


def test_wrong_password_is_401(tmp_path: Path, certs: tuple[Path, Path], exporters: list[ExporterProcess]) -> None:
    cert, _ = certs
    config = write_config(tmp_path / "web.yml", users={USER: bcrypt_hash("s3cret"), "grafana": bcrypt_hash("other")})
    exporter = start(exporters, tmp_path, "--web.config.file", str(config)).wait_ready()
    assert get(exporter.url + "/metrics", USER, "wrong", cafile=cert)[0] == 401
    assert get(exporter.url + "/metrics", USER, "other", cafile=cert)[0] == 401  # another user's password
    assert get(exporter.url + "/metrics", "grafana", "other", cafile=cert)[0] == 200
    assert get(exporter.url + "/metrics", USER, "s3cret", cafile=cert)[0] == 200
    assert get(exporter.url + "/metrics", USER, "wrong", cafile=cert)[0] == 401  # not cached as good


BAD_HASHES = {  # hash: whether promtool check web-config rejects it too
    "s3cret": True,  # a plain password where a hash belongs
    "$2y$99$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG": True,  # cost out of range
    "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=": True,  # an htpasswd SHA-1, not bcrypt
    # One character short: promtool reads only the prefix and the cost and lets it pass, then no
    # password could ever match it; refused here at start.
    "$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7z": False,
}


def test_bad_hash_is_a_one_line_error_at_start(tmp_path: Path, exporters: list[ExporterProcess],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The process exits 2 with one line; every other bad hash is refused the same way (in
    process, through the same main()), and promtool's own check agrees where it looks."""
    config = write_config(tmp_path / "web.yml", tls=False, users={USER: "s3cret"})
    code, lines = start(exporters, tmp_path, "--web.config.file", str(config)).wait_exit()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: web config {config}: basic_auth_users") and "bcrypt" in lines[0], lines

    for bad_hash, promtool_rejects in BAD_HASHES.items():
        write_config(config, tls=False, users={USER: bad_hash})
        assert server_main(["--db", str(tmp_path / "store.db"), "--port", "0", "--web.config.file", str(config)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "is not a bcrypt hash" in lines[0], (bad_hash, lines)
        assert (promtool_check(config).returncode != 0) == promtool_rejects, bad_hash


def test_missing_cert_file_is_a_one_line_error(tmp_path: Path, certs: tuple[Path, Path],
                                               exporters: list[ExporterProcess]) -> None:
    config = write_config(tmp_path / "web.yml", users={USER: bcrypt_hash("s3cret")})
    (tmp_path / "cert.pem").unlink()
    code, lines = start(exporters, tmp_path, "--web.config.file", str(config)).wait_exit()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0] == (f"error: web config {config}: cannot read TLS certificate {tmp_path / 'cert.pem'}: "
                        "No such file or directory"), lines
    assert promtool_check(config).returncode != 0

    # A missing web config file, and the flags and the file together: one line each too.
    missing = tmp_path / "nope.yml"
    code, lines = start(exporters, tmp_path, "--web.config.file", str(missing)).wait_exit()
    assert code == 2 and lines == [f"error: cannot read web config {missing}: No such file or directory"], lines
    code, lines = start(exporters, tmp_path, "--web.config.file", str(config),
                        "--tls-cert", "c.pem", "--tls-key", "k.pem").wait_exit()
    assert code == 2 and len(lines) == 1 and "exclusive" in lines[0] and "--tls-cert/--tls-key" in lines[0], lines


def test_non_loopback_bind_needs_tls_and_auth_or_insecure(tmp_path: Path, certs: tuple[Path, Path],
                                                          exporters: list[ExporterProcess]) -> None:
    users = {USER: bcrypt_hash("s3cret")}
    cases = {
        "no web config": [],
        "users without TLS": ["--web.config.file", str(write_config(tmp_path / "auth.yml", tls=False, users=users))],
        "TLS without users": ["--web.config.file", str(write_config(tmp_path / "tls.yml"))],
    }
    for case, args in cases.items():
        code, lines = start(exporters, tmp_path, "--host", "0.0.0.0", *args).wait_exit()
        assert code == 2 and len(lines) == 1 and "refusing to serve /metrics on non-loopback address 0.0.0.0" \
            in lines[0] and "--insecure" in lines[0], (case, lines)

    # --insecure is the explicit way out (behind your own proxy); the users still apply.
    exporter = start(exporters, tmp_path, "--host", "0.0.0.0", "--insecure", *cases["users without TLS"]).wait_ready()
    assert exporter.url.startswith("http://")
    assert get(exporter.url + "/metrics")[0] == 401
    assert get(exporter.url + "/metrics", USER, "s3cret")[0] == 200
    # Without TLS a web config broken while running answers 500, never the old users' 200.
    time.sleep(0.01)
    write_config(tmp_path / "auth.yml", tls=False, users={USER: "s3cret"})
    assert get(exporter.url + "/metrics", USER, "s3cret")[0] == 500


def rewrite_keeping_mtime(path: Path, text: str) -> None:
    """New content in the same inode with the old mtime: only a SIGHUP can tell the exporter."""
    before = path.stat()
    assert len(text) == before.st_size  # bcrypt hashes of one cost have one length
    with path.open("r+") as f:
        f.write(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def wait_until(probe: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_sighup_reloads_the_password(tmp_path: Path, certs: tuple[Path, Path],
                                     exporters: list[ExporterProcess]) -> None:
    cert, _ = certs
    config = write_config(tmp_path / "web.yml", users={USER: bcrypt_hash("old-password")})
    exporter = start(exporters, tmp_path, "--web.config.file", str(config)).wait_ready()
    url = exporter.url + "/metrics"
    assert get(url, USER, "old-password", cafile=cert)[0] == 200

    new_text = config.read_text().replace(yaml.safe_load(config.read_text())["basic_auth_users"][USER],
                                          bcrypt_hash("new-password"))
    rewrite_keeping_mtime(config, new_text)
    assert get(url, USER, "old-password", cafile=cert)[0] == 200  # not noticed: same mtime, no signal yet

    exporter.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: get(url, USER, "new-password", cafile=cert)[0] == 200)
    assert get(url, USER, "old-password", cafile=cert)[0] == 401
    assert "reloaded (SIGHUP)" in exporter.log()
    assert exporter.proc.poll() is None


def test_a_changed_file_is_reread_and_a_broken_one_refuses(tmp_path: Path, certs: tuple[Path, Path],
                                                           exporters: list[ExporterProcess]) -> None:
    """No signal needed when the file's mtime changes; a file broken while running locks
    everyone out (the old password must not go on working) until it is fixed."""
    cert, _ = certs
    config = write_config(tmp_path / "web.yml", users={USER: bcrypt_hash("old-password")})
    exporter = start(exporters, tmp_path, "--web.config.file", str(config)).wait_ready()
    url = exporter.url + "/metrics"
    assert get(url, USER, "old-password", cafile=cert)[0] == 200

    time.sleep(0.01)  # a distinct mtime even on coarse file systems
    write_config(config, users={USER: bcrypt_hash("new-password")})
    assert get(url, USER, "new-password", cafile=cert)[0] == 200
    assert get(url, USER, "old-password", cafile=cert)[0] == 401

    write_config(config, users={USER: "not-a-hash"})
    for _ in range(3):
        with pytest.raises(OSError):  # TLS: the connection is closed before the handshake
            get(url, USER, "new-password", cafile=cert)
    assert exporter.log().count("not a bcrypt hash") == 1 and "refusing every request" in exporter.log()

    write_config(config, users={USER: bcrypt_hash("fixed")})
    assert get(url, USER, "fixed", cafile=cert)[0] == 200

    # A certificate named before it exists: refused, then served as soon as it appears.
    doc = yaml.safe_load(config.read_text())
    doc["tls_server_config"] = {"cert_file": "next/cert.pem", "key_file": "next/key.pem"}
    config.write_text(yaml.safe_dump(doc))
    with pytest.raises(OSError):
        get(url, USER, "fixed", cafile=cert)
    (tmp_path / "next").mkdir()
    next_cert, _ = self_signed_cert(tmp_path / "next")
    assert get(url, USER, "fixed", cafile=next_cert)[0] == 200

    # Turning TLS off under a running exporter is refused too (it needs a restart).
    write_config(config, tls=False, users={USER: bcrypt_hash("fixed")})
    with pytest.raises(OSError):
        get(url, USER, "fixed", cafile=cert)
    assert "turning TLS off needs a restart" in exporter.log()
    assert exporter.proc.poll() is None


def test_a_rotated_certificate_is_served_without_a_signal(tmp_path: Path, certs: tuple[Path, Path],
                                                         exporters: list[ExporterProcess]) -> None:
    """cert-manager style: new certificate and key written over the old ones; the next connection
    gets the new certificate (the files a web config names are watched too)."""
    old_cert, _ = certs
    (tmp_path / "old-cert.pem").write_bytes(old_cert.read_bytes())
    config = write_config(tmp_path / "web.yml", users={USER: bcrypt_hash("s3cret")})
    exporter = start(exporters, tmp_path, "--web.config.file", str(config)).wait_ready()
    url = exporter.url + "/metrics"
    assert get(url, USER, "s3cret", cafile=old_cert)[0] == 200
    time.sleep(0.01)
    new_cert, _ = self_signed_cert(tmp_path)  # the same two file names, a new key
    assert get(url, USER, "s3cret", cafile=new_cert)[0] == 200
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):  # not the old one any more
        get(url, USER, "s3cret", cafile=tmp_path / "old-cert.pem")


def test_sighup_without_a_web_config_file_does_not_stop_the_exporter(tmp_path: Path,
                                                                     exporters: list[ExporterProcess]) -> None:
    exporter = start(exporters, tmp_path).wait_ready()
    exporter.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP: nothing to reload" in exporter.log())
    assert get(exporter.url + "/metrics")[0] == 200 and exporter.proc.poll() is None


def test_client_certificates(tmp_path: Path, certs: tuple[Path, Path], exporters: list[ExporterProcess]) -> None:
    """client_ca_file with RequireAndVerifyClientCert: a client without a certificate signed by
    that CA cannot even finish the handshake."""
    cert, _ = certs
    (tmp_path / "client").mkdir()
    client = self_signed_cert(tmp_path / "client")
    (tmp_path / "other").mkdir()
    stranger = self_signed_cert(tmp_path / "other")
    config = write_config(tmp_path / "web.yml", users={USER: bcrypt_hash("s3cret")})
    doc = yaml.safe_load(config.read_text())
    doc["tls_server_config"].update(client_ca_file="client/cert.pem", client_auth_type="RequireAndVerifyClientCert")
    config.write_text(yaml.safe_dump(doc))
    assert promtool_check(config).returncode == 0

    exporter = start(exporters, tmp_path, "--host", "0.0.0.0", "--web.config.file", str(config)).wait_ready()
    url = exporter.url + "/metrics"
    assert get(url, USER, "s3cret", cafile=cert, client_cert=client)[0] == 200
    assert get(url, USER, "wrong", cafile=cert, client_cert=client)[0] == 401
    for other in (None, stranger):
        with pytest.raises(OSError):
            get(url, USER, "s3cret", cafile=cert, client_cert=other)


# --- The parser's refusals, in process ----------------------------------------------------------


@pytest.mark.parametrize("doc, message", [
    ({"tls_server_config": {"cert_file": "c.pem"}}, "tls_server_config needs key_file"),
    ({"tls_server_config": {"key_file": "k.pem"}}, "tls_server_config needs cert_file"),
    ({"tls_server_config": {"cert_file": "c.pem", "key_file": "k.pem", "client_ca_file": "ca.pem"}},
     "client_ca_file is set but client_auth_type is NoClientCert"),
    ({"tls_server_config": {"cert_file": "c.pem", "key_file": "k.pem",
                            "client_auth_type": "RequireAndVerifyClientCert"}}, "needs client_ca_file"),
    ({"tls_server_config": {"cert_file": "c.pem", "key_file": "k.pem", "client_auth_type": "RequestClientCert"}},
     "is not supported (it accepts unverified client certificates)"),
    ({"tls_server_config": {"cert_file": "c.pem", "key_file": "k.pem", "client_auth_type": "Sometimes"}},
     "invalid client_auth_type 'Sometimes'"),
    ({"tls_server_config": {"cert_file": "c.pem", "key_file": "k.pem", "min_version": "TLS14"}},
     "unknown TLS version 'TLS14'"),
    ({"tls_server_config": {"cert_file": "c.pem", "key_file": "k.pem", "cipher_suites": ["X"]}},
     "tls_server_config.cipher_suites is not supported"),
    ({"tls_server_config": {"certfile": "c.pem"}}, "unknown field 'certfile' in tls_server_config"),
    ({"basic_auth_user": {"a": "b"}}, "unknown field 'basic_auth_user' in the top level"),
    ({"rate_limit": {"interval": "1s", "burst": 5}}, "rate_limit is not supported"),
    ({"http_server_config": {"headers": {"X-Frame-Options": "always"}}}, "invalid value for HTTP header"),
    ({"http_server_config": {"headers": {"Server": "x"}}}, "HTTP header 'Server' cannot be configured"),
    ({"basic_auth_users": {"a:b": "$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG"}},
     "is not a user name"),
    ({"basic_auth_users": ["prometheus"]}, "basic_auth_users must be a mapping"),
])
def test_parser_refusals_are_one_line(tmp_path: Path, doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_web_config(yaml.safe_dump(doc), str(tmp_path))
    text = str(raised.value)
    assert message in text and "\n" not in text, text


def test_parser_accepts_the_toolkit_defaults(tmp_path: Path) -> None:
    """An empty file is no TLS and no users; http2 is accepted (this server speaks HTTP/1.1);
    the htpasswd example hash from exporter-toolkit's docs is a valid hash; a YAML error is one line."""
    empty = parse_web_config("", str(tmp_path))
    assert empty.tls is None and empty.auth is None
    example = "$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG"
    config = parse_web_config(yaml.safe_dump({"http_server_config": {"http2": True},
                                              "basic_auth_users": {USER: example}}), str(tmp_path))
    assert config.auth is not None and not config.auth.allows(None)
    with pytest.raises(ConfigurationError, match=r"^not valid YAML at line 3: [^\n]+$"):
        parse_web_config("basic_auth_users:\n  a: [b\n", str(tmp_path))


def test_bcrypt_results_are_cached_per_hash() -> None:
    """A scrape every 15 s must not pay a bcrypt each time; a changed hash is a new key."""
    cache = BcryptCache()
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=11))  # ~0.1 s per check
    assert cache.check(USER, hashed, "pw")
    started = time.perf_counter()
    for _ in range(20):
        assert cache.check(USER, hashed, "pw") and not cache.check(USER, hashed, "nope")
    assert time.perf_counter() - started < 0.5
    other = bcrypt.hashpw(b"other", bcrypt.gensalt(rounds=4))
    assert not cache.check(USER, other, "pw") and cache.check(USER, other, "other")
