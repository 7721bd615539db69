"""The README and docs stay true: the ```python blocks of each file run as written, in order and
in one namespace like a notebook (fragments that are not meant to run alone are fenced ```py)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_python_examples_in_docs_run(path, tmp_path, monkeypatch):
    blocks = python_blocks(path)
    if path.name == "README.md":
        assert blocks, "the README must carry a runnable Python example"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"doc_{path.stem}"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{path.name}[block {i}]", "exec"), namespace)
