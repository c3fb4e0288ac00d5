"""Writes a copy of leasestore.rules.yml with your settings: the runbook link and the window.

    python exporter/rules/render_rules.py --runbook-url https://git.example.org/ops/leasestore/blob/main/docs/runbook.md \\
        -o /etc/prometheus/rules/leasestore.rules.yml

--runbook-url  every alert's ``runbook_url`` becomes ``URL#<alert section>``: one setting makes
               every link absolute (Alertmanager and Grafana show them outside this repository).
--window-minutes
               what the windowed alerts count over; must equal the exporter's ``--window``
               (the rules check ``leasestore_metrics_window_seconds``). Default 60.

Without ``-o`` the rules go to stdout. Only those two settings change; the text, comments
included, stays the shipped file's, so the output diffs cleanly against it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).parent
RULES = HERE / "leasestore.rules.yml"

_RUNBOOK = re.compile(r"^(?P<head>[ \t]*runbook_url:[ \t]*)(?P<base>[^#\s]*)#(?P<anchor>[\w-]+)[ \t]*$", re.MULTILINE)
_WINDOW_SECONDS = re.compile(r"(?P<head>leasestore_metrics_window_seconds\s*[!=]=\s*)(?P<value>[0-9.e+-]+)")
_WINDOW_TEXT = re.compile(r"(?P<head>the last )(?P<value>[0-9.]+)(?P<tail> minutes)")


def absolute_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        raise ValueError(f"--runbook-url must be an absolute http(s) URL without a #fragment, not {url!r}")
    return url


def seconds_text(minutes: float) -> str:
    """The window in seconds exactly as the exporter computes it (``minutes * 60.0``)."""
    if not 0 < minutes:
        raise ValueError("--window-minutes must be positive")
    seconds = float(minutes) * 60.0
    short = f"{seconds:g}"
    return short if float(short) == seconds else repr(seconds)


def render(text: str, *, runbook_url: str | None = None, window_minutes: float | None = None) -> str:
    """``text`` (the shipped rules) with the settings given; None keeps the shipped value."""
    if runbook_url is not None:
        base = absolute_url(runbook_url)
        text, n = _RUNBOOK.subn(lambda m: f"{m['head']}{base}#{m['anchor']}", text)
        assert n, "no runbook_url in the rules"
    if window_minutes is not None:
        seconds = seconds_text(window_minutes)
        text, n = _WINDOW_SECONDS.subn(lambda m: f"{m['head']}{seconds}", text)
        assert n, "no window check in the rules"
        text = _WINDOW_TEXT.sub(lambda m: f"{m['head']}{float(window_minutes):g}{m['tail']}", text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runbook-url", help="absolute URL of docs/runbook.md as your operators reach it")
    parser.add_argument("--window-minutes", type=float, help="the exporter's --window (default 60)")
    parser.add_argument("-o", "--output", help="write here instead of stdout")
    args = parser.parse_args(argv)
    try:
        text = render(RULES.read_text(), runbook_url=args.runbook_url, window_minutes=args.window_minutes)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
