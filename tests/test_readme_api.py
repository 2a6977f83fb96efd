"""The README's Python API example runs as printed (CI runs it on every submission)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_api_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section holds one runnable example"
    return blocks[0]


@pytest.mark.slow
def test_readme_python_api_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGEBIAS_QUIET", "1")
    namespace: dict = {}
    exec(compile(_python_api_example(), "README.md (Python API)", "exec"), namespace)
    result = namespace["result"]
    assert (tmp_path / "runs" / "api" / "evaluation" / "results.json").is_file()
    assert (tmp_path / "runs" / "api" / "scores.png").stat().st_size > 10_000
    assert list(result.by_group.index) == ["0-9", "10-19", "20-69"]
    assert result.by_group["n_genuine"].sum() > 0
