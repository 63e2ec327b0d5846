"""The README and docs/*.md as CI sees them: every ```python block runs (from the repository
root, as a reader would paste it), the README stays short, and its code map names every file."""

import glob
import os
import re

import pytest
import torch
from conftest import ROOT

import mot

README = os.path.join(ROOT, "README.md")
DOCS = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
MAX_README_BYTES = 15_000


def python_blocks(path: str) -> list:
    """The ```python blocks of a markdown file, each as (its first line number, its code)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return [(text.count("\n", 0, m.start()) + 2, m.group(1))
            for m in re.finditer(r"^```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE)]


EXAMPLES = [(os.path.relpath(path, ROOT), line, code)
            for path in DOCS for line, code in python_blocks(path)]


def test_the_readme_has_python_examples():
    assert any(doc == "README.md" for doc, _, _ in EXAMPLES)


@pytest.mark.parametrize("doc, line, code", EXAMPLES,
                         ids=[f"{doc}:{line}" for doc, line, _ in EXAMPLES])
def test_the_example_runs(doc, line, code, monkeypatch):
    """Each block alone, in a fresh namespace; what it registers in mot.FFNS is removed after."""
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(ROOT)
    monkeypatch.setattr(mot, "FFNS", dict(mot.FFNS))  # a block may register an FFN kind
    with torch.random.fork_rng():  # the other tests' random streams stay as they were
        torch.manual_seed(0)
        exec(compile(code, f"{doc}, the block at line {line}", "exec"),  # noqa: S102
             {"__name__": "__main__"})


def test_the_readme_is_short():
    size = os.path.getsize(README)
    assert size <= MAX_README_BYTES, (
        f"README.md is {size:,} bytes, over {MAX_README_BYTES:,}: move details to docs/")


def test_the_code_map_names_every_top_level_python_file():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    found = re.search(r"^## Code map\n(.*?)(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    assert found, "README.md has no '## Code map' section"
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "*.py")))
    missing = [name for name in files if f"`{name}`" not in found.group(1)]
    assert not missing, f"README.md's code map does not name {missing}"
