"""The README's Python examples run as written (those that need a user's data loader excepted)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("code", [b for b in BLOCKS if "loader" not in b], ids=lambda b: b.splitlines()[1][:40])
def test_readme_example_runs(code):
    exec(compile(code, str(README), "exec"), {})
