"""The documentation builds with warnings as errors, and the quick start's Python blocks run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)


def test_quick_start_code_blocks_run(tmp_path):
    blocks = python_blocks((REPO / "docs" / "quickstart.md").read_text())
    assert len(blocks) >= 3
    script = tmp_path / "quickstart.py"
    script.write_text("\n".join(blocks))  # blocks build on each other, as a reader runs them in order
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Paris" in result.stdout


def test_readme_quick_start_names_real_apis():
    readme = (REPO / "README.md").read_text()
    assert "bash scripts/demo.sh" in readme and "bash scripts/test.sh" in readme
    import bestiary

    for name in re.findall(r"from bestiary import ([\w, ]+)", readme):
        for symbol in name.split(","):
            assert hasattr(bestiary, symbol.strip()), symbol


def test_docs_build_strict(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    support = (tmp_path / "site" / "support" / "index.html").read_text()
    assert "bestiary-text" in support and "llama" in support
