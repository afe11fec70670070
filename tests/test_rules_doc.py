"""docs/rules.md stays true: every keyword of the grammar is documented, every example compiles."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vigie import rules

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "rules.md"
GRAMMAR = ROOT / "rules" / "grammar.lark"
HEADER = 'pack "doc-example" version "1.0.0"\n'


def _keywords() -> list[str]:
    """Every quoted literal word of the grammar (``"pack"``, ``"within"``...)."""
    return sorted(set(re.findall(r'"([a-z][a-z0-9_]*)"', GRAMMAR.read_text(encoding="utf-8"))))


def _examples() -> list[tuple[int, str]]:
    """The ```rules code blocks of the doc, with the line each starts on."""
    text = DOC.read_text(encoding="utf-8")
    blocks = []
    for match in re.finditer(r"^```rules\n(.*?)^```", text, flags=re.S | re.M):
        blocks.append((text.count("\n", 0, match.start()) + 2, match.group(1)))
    return blocks


def test_the_grammar_has_keywords() -> None:
    assert {"pack", "rule", "within", "escalate", "otherwise"} <= set(_keywords())


@pytest.mark.parametrize("keyword", _keywords())
def test_every_keyword_of_the_grammar_is_documented(keyword: str) -> None:
    doc = DOC.read_text(encoding="utf-8")
    assert re.search(rf"`[^`\n]*\b{keyword}\b[^`\n]*`", doc), f"`{keyword}` is not in {DOC}"


def test_the_doc_has_examples() -> None:
    assert len(_examples()) >= 10


@pytest.mark.parametrize(("line", "source"), _examples(), ids=lambda v: str(v)[:30])
def test_every_example_compiles(line: int, source: str) -> None:
    text = source if re.match(r"\s*(#.*\n\s*)*pack\b", source) else HEADER + source
    ir, diagnostics = rules.compile_pack(text, f"docs/rules.md:{line}")
    errors = [rules.render(d, text) for d in diagnostics if d.is_error]
    assert ir is not None and not errors, "\n".join(errors)
