"""The documentation site builds strictly, and what it says stays tied to the code.

``mkdocs build --strict`` fails on any warning: a page in ``nav`` that does not exist, a page
missing from ``nav``, a link to a page or heading that does not exist, a snippet file that is
gone, a ``leasestore`` command without its section in ``docs/cli.md`` (docs/_hooks).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from leasestore.metrics import METRICS
from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"
HOOKS = DOCS / "_hooks" / "leasestore_docs.py"
RULES = ROOT / "exporter" / "rules" / "leasestore.rules.yml"
GENERATED_PAGES = {"readme.md"}  # made by the hook from README.md
SNIPPET = re.compile(r'^[ \t]*--8<-- "(?P<path>[^"]+)"[ \t]*$', re.MULTILINE)


class _AnyTagLoader(yaml.SafeLoader):
    """mkdocs.yml uses MkDocs' own tags (``!relative``); their values do not matter here."""


_AnyTagLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def mkdocs_config() -> dict[str, Any]:
    return yaml.load(MKDOCS_YML.read_text(), Loader=_AnyTagLoader)


def nav_pages(nav: Any) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    return []


def built_page(site: Path, page: str) -> Path:
    """Where MkDocs (use_directory_urls) writes ``page``."""
    stem = page.removesuffix(".md")
    return site / "index.html" if stem == "index" else site / stem / "index.html"


def rules() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    require(importlib.util.find_spec("mkdocs") is not None and importlib.util.find_spec("material") is not None,
            "mkdocs and mkdocs-material (pip install -e '.[docs]')")
    site = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about MkDocs 2.0
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return SimpleNamespace(site=site, done=done, seconds=time.monotonic() - started)


def test_the_site_builds_strictly(build: SimpleNamespace) -> None:
    output = build.done.stdout + build.done.stderr
    assert build.done.returncode == 0, output
    assert "WARNING" not in output, output
    assert (build.site / "index.html").is_file()
    assert not (build.site / "_hooks").exists(), "the hooks are code, not pages"


def test_every_nav_page_exists_and_is_built(build: SimpleNamespace) -> None:
    pages = nav_pages(mkdocs_config()["nav"])
    assert len(pages) == len(set(pages)), "a page is twice in nav"
    written = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if "_hooks" not in p.parts}
    assert set(pages) - GENERATED_PAGES <= written, "nav names a page that does not exist"
    assert written <= set(pages), "a page is missing from nav"
    for page in pages:
        assert built_page(build.site, page).is_file(), page


def test_the_runbook_has_a_section_for_every_alert_link(build: SimpleNamespace) -> None:
    """The rules link to ``<base>#<anchor>``: those anchors exist on the built runbook page too."""
    html = built_page(build.site, "runbook.md").read_text()
    ids = set(re.findall(r'id="([^"]+)"', html))
    for name, rule in rules().items():
        anchor = urlsplit(rule["annotations"]["runbook_url"]).fragment
        assert anchor in ids, f"{name}: the built runbook has no #{anchor}"


def test_every_command_is_documented_with_its_help(build: SimpleNamespace) -> None:
    html = built_page(build.site, "cli.md").read_text()
    for usage in ("Usage: leasestore [OPTIONS] COMMAND", "Usage: leasestore claim",
                  "Usage: leasestore dead-letters resolve", "Usage: leasestore phase3 regression"):
        assert usage in html, usage
    assert "usage: leasestore-exporter" in built_page(build.site, "exporter.md").read_text()


def load_hooks() -> Any:
    require(importlib.util.find_spec("mkdocs") is not None, "mkdocs (pip install -e '.[docs]')")
    spec = importlib.util.spec_from_file_location("leasestore_docs_hooks", HOOKS)
    assert spec and spec.loader
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    return hooks


def test_the_hook_refuses_a_cli_page_without_every_command() -> None:
    from mkdocs.exceptions import PluginError

    hooks = load_hooks()
    page = SimpleNamespace(file=SimpleNamespace(src_uri="cli.md"))
    with pytest.raises(PluginError, match="leasestore revoke"):
        hooks.on_page_markdown("# CLI\n\n<!-- help: leasestore claim -->\n", page, None, None)
    with pytest.raises(PluginError, match="names no command"):
        hooks.on_page_markdown("<!-- help: leasestore frobnicate -->\n", page, None, None)
    text = hooks.on_page_markdown("<!-- help: leasestore-exporter -->\n",
                                  SimpleNamespace(file=SimpleNamespace(src_uri="exporter.md")), None, None)
    assert text.startswith("```text\nusage: leasestore-exporter")


def test_readme_links_point_into_the_site() -> None:
    """The README links to docs/<page>.md (right on GitHub); on the site those are the pages,
    links to other files of the repository become text, and anything else stays for --strict."""
    readme = load_hooks().readme_page(
        "[CLI](docs/cli.md#claim) [example](examples/agent_sync.py) [gone](no/such/file.py) [top](#why)\n"
        "```python\nx = y[0](docs/z)\n```\n")
    assert readme == ("[CLI](cli.md#claim) example [gone](no/such/file.py) [top](#why)\n"
                      "```python\nx = y[0](docs/z)\n```\n")


def test_reference_tables_name_every_metric_and_alert() -> None:
    metrics_page = (DOCS / "metrics.md").read_text()
    for metric in METRICS:
        assert f"| {metric.key} | `{metric.gauge}` |" in metrics_page, metric.key
        threshold = f"{metric.threshold_env[0]}={metric.default_threshold:g}"
        assert threshold in metrics_page, f"{metric.key}: default threshold {threshold} not in metrics.md"
    alerts_page = (DOCS / "alerts.md").read_text()
    for name, rule in rules().items():
        assert f"[`{name}`](runbook.md#{name.lower()})" in alerts_page, name
        row = next(line for line in alerts_page.splitlines() if f"[`{name}`]" in line)
        assert f"({rule['for']})" in row and f"| {rule['labels']['severity']} |" in row, name


def test_snippets_name_existing_files() -> None:
    for page in DOCS.rglob("*.md"):
        for match in SNIPPET.finditer(page.read_text()):
            assert (ROOT / match["path"]).is_file(), f"{page.name}: {match['path']}"


def test_python_blocks_of_the_pages_run(tmp_path: Path) -> None:
    """Each page's own ``python`` blocks (not the included example files, which
    tests/test_examples.py runs), in order, on a fresh default store."""
    for page in sorted(DOCS.glob("*.md")):
        blocks = [b for b in re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL) if "--8<--" not in b]
        if not blocks:
            continue
        home = tmp_path / page.stem
        home.mkdir()
        script = home / "blocks.py"
        script.write_text("\n".join(blocks))
        env = {**os.environ, "ORCH_DB_PATH": str(home / "docs.db"), "HOME": str(home)}
        env.pop("LEASESTORE_DATABASE_URL", None)
        done = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=120,
                              env=env, cwd=home)
        assert done.returncode == 0, f"{page.name}:\n{done.stderr}"
