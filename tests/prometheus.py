"""A real Prometheus server (and Alertmanager, and a webhook receiver) for tests:
loopback ports, temporary config and data dirs."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (EC key: quick to make) and its key."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True)
    return cert, key


class Prometheus:
    """``prometheus`` on a free loopback port; ``stop()`` ends it."""

    def __init__(self, binary: str, folder: Path, config: dict[str, Any]) -> None:
        self.folder = folder
        (folder / "data").mkdir(parents=True, exist_ok=True)
        config_file = folder / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (folder / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config_file}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self.wait_for(lambda: self._ready() or None, timeout=30, what="prometheus to be ready")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.log_tail()}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        return list(data["result"])

    def wait_for(self, probe: Callable[[], T | None], timeout: float, what: str) -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value is not None:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{self.log_tail()}")
            time.sleep(0.25)

    def log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        text = (self.folder / "prometheus.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def wait_for(probe: Callable[[], T | None], timeout: float, what: str,
             details: Callable[[], str] = lambda: "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{details()}")
        time.sleep(0.2)


def alertmanager_binary() -> str | None:
    """Upstream names it ``alertmanager``; Debian's package ``prometheus-alertmanager``."""
    return shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")


class Alertmanager:
    """``alertmanager`` on a free loopback port, clustering off; ``stop()`` ends it."""

    def __init__(self, binary: str, folder: Path, config: dict[str, Any]) -> None:
        self.folder = folder
        (folder / "data").mkdir(parents=True, exist_ok=True)
        self.config_file = folder / "alertmanager.yml"
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (folder / "alertmanager.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.config_file}", f"--storage.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=",
             "--log.level=debug"],
            stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_for(self._ready, timeout=30, what="alertmanager to be ready", details=self.log_tail)
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool | None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"alertmanager exited with {self.proc.returncode}: {self.log_tail()}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as resp:
                return True if resp.status == 200 else None
        except OSError:
            return None

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert it holds (``/api/v2/alerts``), silenced and inhibited ones included."""
        with urllib.request.urlopen(self.url + "/api/v2/alerts", timeout=10) as resp:
            return list(json.load(resp))

    def log_tail(self, lines: int = 30) -> str:
        self.log.flush()
        text = (self.folder / "alertmanager.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


@dataclass(frozen=True)
class Notification:
    """One webhook POST from Alertmanager."""

    at: float  # time.monotonic() at arrival
    path: str
    body: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.body["status"])

    @property
    def alerts(self) -> dict[str, str]:
        """alertname -> firing|resolved, for the alerts this notification lists."""
        return {a["labels"]["alertname"]: a["status"] for a in self.body["alerts"]}

    @property
    def group(self) -> dict[str, str]:
        return dict(self.body["groupLabels"])


class WebhookReceiver:
    """A loopback HTTP server that records every POST Alertmanager's webhook_configs make."""

    def __init__(self) -> None:
        self.notifications: list[Notification] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver._lock:
                    receiver.notifications.append(Notification(time.monotonic(), self.path, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="webhook")
        self._thread.start()

    def received(self, predicate: Callable[[Notification], bool] = lambda n: True) -> list[Notification]:
        with self._lock:
            return [n for n in self.notifications if predicate(n)]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
