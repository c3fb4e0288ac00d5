"""The README's examples run as written: the files in ``examples/`` on both
backends, and every ``python`` block of the README in order."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(example: Path, db_url: str) -> None:
    done = subprocess.run([sys.executable, str(example), db_url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


def test_examples_are_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for example in EXAMPLES:
        assert f"examples/{example.name}" in readme


def test_readme_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ``python`` block, in order, in one namespace, on a fresh default store."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks
    script = tmp_path / "readme_blocks.py"
    script.write_text("\n".join(blocks))
    env = {**os.environ, "ORCH_DB_PATH": str(tmp_path / "readme.db"), "HOME": str(tmp_path)}
    env.pop("LEASESTORE_DATABASE_URL", None)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
