"""docs/client.md's Python examples, run top to bottom against the real server so they cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import auth
from tests.support.stack import EdgeProcess

pytestmark = pytest.mark.e2e
DOC = Path(__file__).resolve().parents[2] / "docs/client.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_the_client_guide_examples_run(stack: EdgeProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _python_blocks(DOC.read_text())
    assert len(blocks) >= 5
    monkeypatch.setenv("SEEDLINE_TARGET", stack.server.target)
    monkeypatch.setenv("SEEDLINE_TOKEN", auth.mint())
    namespace: dict[str, object] = {"__name__": "client_md"}
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"{DOC.name}[block {number}]", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"example {number} of {DOC.name} failed:\n{block}") from exc
    # What the examples claim, checked here too.
    assert str(namespace["who"].principal) == f"users/{auth.ADMIN}"  # type: ignore[attr-defined]
    assert len(namespace["licenses"]) == 5  # type: ignore[arg-type]
    assert namespace["missing"].reason == "RESOURCE_NOT_FOUND"  # type: ignore[attr-defined]
