"""The README's Python examples run as written (those that need the user's own data loader
or model, or several GPUs, excepted)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
USER_PROVIDED = ("loader", "build_model")


@pytest.mark.parametrize("code", [b for b in BLOCKS if not any(n in b for n in USER_PROVIDED)],
                         ids=lambda b: b.splitlines()[1][:40])  # fmt: skip
def test_readme_example_runs(code):
    exec(compile(code, str(README), "exec"), {})
