"""The README's code runs as written: every ```python block of README.md, in order, in one
namespace (the README reads as one session: a later block uses names an earlier one made),
in a scratch folder (the blocks save files). A block that is too slow gets a faster README
block, never a skip here."""
import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(text):
    """(first line number of the code, code) of every ```python block, in order."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


def test_the_fence_parser_finds_blocks_and_their_lines():
    text = "intro\n```python\nx = 1\n```\n```bash\nls\n```\n\n```python\ny = x + 1\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (10, "y = x + 1\n")]


def test_every_python_block_of_the_readme_runs(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")   # the blocks train on the digits
    with open(README, encoding="utf-8") as f:
        blocks = python_blocks(f.read())
    assert len(blocks) >= 4, "the README's python blocks were not found"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    for line, code in blocks:
        # compiled under the README's name with its line numbers, so a traceback points into README.md
        compiled = compile("\n" * (line - 1) + code, README, "exec")
        try:
            exec(compiled, namespace)
        except Exception as exc:   # noqa: BLE001 (any failure of a block is the finding)
            pytest.fail(f"README.md's python block at line {line} raised {type(exc).__name__}: {exc}")
