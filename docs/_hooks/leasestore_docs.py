"""MkDocs hooks for the leasestore site (mkdocs.yml ``hooks:``; not a page: ``exclude_docs``).

* The README becomes the page ``readme.md``, so the site links to its quick start and
  ``mkdocs build --strict`` checks the README's links into the site: ``docs/<page>.md[#anchor]``
  becomes ``<page>.md[#anchor]``. A link to another file of the repository that exists
  (``examples/agent_sync.py``) works on GitHub but has no page here: it becomes its plain text.
  Any other relative link is left as it is, so the strict build reports it.
* ``<!-- help: leasestore claim -->`` (any command path, or ``leasestore-exporter``) becomes the
  command's ``--help`` text, taken from the code at build time, so option lists cannot go stale.
  Every ``leasestore`` command must have its marker in ``cli.md``; a missing or unknown one
  fails the build.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CLI_PAGE = "cli.md"
MARKER = re.compile(r"^<!-- help: (?P<command>[a-z0-9 -]+?) -->[ \t]*$", re.MULTILINE)
README_LINK = re.compile(r"(?P<bang>!?)\[(?P<text>[^\]\n]*)\]\((?P<target>[^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)

# Runs in a child process: the plain (not rich) help of every command, as JSON.
_COLLECT = r"""
import contextlib, io, json, sys
import typer.main
from leasestore import cli
from exporter import server

helps = {}

def walk(command, path):
    subcommands = getattr(command, "commands", None)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        cli.main([*path, "--help"])
    helps[" ".join(["leasestore", *path])] = {"text": buffer.getvalue(), "group": bool(subcommands)}
    for name, sub in sorted((subcommands or {}).items()):
        if not getattr(sub, "hidden", False):
            walk(sub, [*path, name])

walk(typer.main.get_command(cli.app), [])
buffer = io.StringIO()
with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
    server.parse_args(["--help"])
helps["leasestore-exporter"] = {"text": buffer.getvalue(), "group": False}
json.dump(helps, sys.stdout)
"""

_helps: dict[str, dict[str, Any]] | None = None


def _collect_helps() -> dict[str, dict[str, Any]]:
    env = {**os.environ, "TYPER_USE_RICH": "0", "COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}
    done = subprocess.run([sys.executable, "-c", _COLLECT], check=False, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise PluginError(f"could not read the commands' --help:\n{done.stderr}")
    return json.loads(done.stdout)


def on_pre_build(config: Any) -> None:
    global _helps
    _helps = None  # `mkdocs serve` rebuilds: read the code again


def _readme_link(match: re.Match[str]) -> str:
    target = match["target"]
    if target.startswith("docs/"):
        return f"{match['bang']}[{match['text']}]({target.removeprefix('docs/')})"
    if not match["bang"] and not target.startswith(("#", "http://", "https://", "mailto:")):
        path = target.partition("#")[0]
        if path and (ROOT / path).exists() and not path.endswith(".md"):
            return match["text"]
    return match[0]


def readme_page(text: str) -> str:
    """The README with its links made to work inside the site (code blocks untouched)."""
    parts, last = [], 0
    for fence in FENCE.finditer(text):
        parts += [README_LINK.sub(_readme_link, text[last:fence.start()]), fence[0]]
        last = fence.end()
    parts.append(README_LINK.sub(_readme_link, text[last:]))
    return "".join(parts)


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "readme.md", content=readme_page(README.read_text(encoding="utf-8"))))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    global _helps
    if "<!-- help: " not in markdown:
        if page.file.src_uri == CLI_PAGE:
            raise PluginError(f"{CLI_PAGE} has no <!-- help: ... --> markers")
        return markdown
    if _helps is None:
        _helps = _collect_helps()
    helps = _helps
    seen: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        command = match["command"]
        if command not in helps:
            raise PluginError(f"{page.file.src_uri}: <!-- help: {command} --> names no command "
                              f"(known: {', '.join(sorted(helps))})")
        seen.add(command)
        return "```text\n" + helps[command]["text"].rstrip() + "\n```"

    markdown = MARKER.sub(replace, markdown)
    if page.file.src_uri == CLI_PAGE:
        missing = sorted(c for c in helps if c.split()[0] == "leasestore" and c not in seen)
        if missing:
            raise PluginError(f"{CLI_PAGE} documents no section for: {', '.join(missing)} "
                              "(add a heading and a <!-- help: ... --> marker for each)")
    return markdown


def on_serve(server: Any, config: Any, builder: Any) -> Any:
    server.watch(str(README))
    for folder in ("leasestore", "exporter"):
        server.watch(str(ROOT / folder))
    return server
