"""The IR's schema (``vigie.ir_schema``): what the rule language writes validates, and the
engine refuses a malformed IR with a ``PackError`` that names the JSON path of the problem."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vigie.engine import PackError, load_pack
from vigie.ir_schema import EXPRESSION_OPS, ir_adapter, json_path
from vigie.rules import compile_pack
from vigie.rules.ir import IR_OPS

ROOT = Path(__file__).parents[1]
PACKS = sorted((ROOT / "rules" / "packs").glob("*.rules"))
GOLDEN = sorted((ROOT / "tests" / "golden" / "rules").glob("*.rules"))


def compiled(path: Path) -> dict[str, Any]:
    ir, diagnostics = compile_pack(path.read_text(encoding="utf-8"), str(path))
    assert ir is not None, diagnostics
    return json.loads(json.dumps(ir))  # as read back from a file


@pytest.mark.parametrize("path", PACKS + GOLDEN, ids=lambda p: p.name)
def test_every_compiled_pack_validates(path: Path) -> None:
    ir = compiled(path)
    ir_adapter().validate_python(ir)
    assert len(load_pack(ir).rules) == len(ir["rules"])


def test_the_schema_names_every_op_the_compiler_writes() -> None:
    assert EXPRESSION_OPS == IR_OPS


@pytest.fixture(scope="module")
def small_ir() -> dict[str, Any]:
    return compiled(ROOT / "tests" / "golden" / "rules" / "hyperkalaemia.rules")


def broken(ir: dict[str, Any], path: str, change: Any) -> dict[str, Any]:
    """A copy of ``ir`` where ``change(container, key)`` altered the value at ``path``."""
    out = copy.deepcopy(ir)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
    container: Any = out
    for step in parents:
        container = container[step]
    change(container, last)
    return out


def delete(container: Any, key: Any) -> None:
    del container[key]


def setter(value: Any) -> Any:
    def change(container: Any, key: Any) -> None:
        container[key] = value

    return change


@pytest.mark.parametrize(
    ("path", "change", "message"),
    [
        ("rules/0/title", delete, r"at rules\[0\]\.title: Field required"),
        ("rules/0/severity", setter("huge"), r"at rules\[0\]\.severity: Input should be"),
        ("rules/0/condition/op", setter("frobnicate"), r"at rules\[0\]\.condition: unknown op"),
        ("rules/0/condition/span", setter([3]), r"at rules\[0\]\.condition\.span: List"),
        ("rules/0/condition/colour", setter("red"), r"at rules\[0\]\.condition\.colour: Extra"),
        ("rules/0/bindings/0/kind", setter("drugs"), r"at rules\[0\]\.bindings\[0\]: unknown kind"),
        ("rules/0/message/0", setter({"txt": "K+"}), r"at rules\[0\]\.message\[0\]\.text: Field"),
        ("pack/sha256", setter(None), r"at pack\.sha256: Input should be a valid string"),
        ("params/k_max/min", setter("low"), r"at params\.k_max\.min: Input should be"),
        (
            "sets/potassium_binders/terms/0/routes",
            setter("iv"),
            r"at sets\.potassium_binders\.terms\[0\]\.routes: Input should be a valid list",
        ),
        (
            "sets/potassium_binders/terms/0/exactly",
            setter(["V03AE"]),
            r"at sets\.potassium_binders\.terms\[0\]\.exactly: Extra",
        ),
    ],
)
def test_a_malformed_ir_is_a_pack_error_naming_its_path(
    small_ir: dict[str, Any], path: str, change: Any, message: str
) -> None:
    with pytest.raises(PackError, match=message):
        load_pack(broken(small_ir, path, change))


def test_a_deep_node_is_located_through_its_parents(small_ir: dict[str, Any]) -> None:
    rule = next(i for i, r in enumerate(small_ir["rules"]) if r["condition"]["op"] == "and")
    bad = broken(small_ir, f"rules/{rule}/condition/args/1/type", setter("colour"))
    with pytest.raises(PackError, match=rf"at rules\[{rule}\]\.condition\.args\[1\]\.type: "):
        load_pack(bad)


def test_the_version_is_checked_first() -> None:
    with pytest.raises(PackError, match=r"IR version 2 is not supported \(expected 1\)"):
        load_pack({"ir_version": 2, "rules": "not even a list"})


def test_json_path_skips_union_tags() -> None:
    document = {"rules": [{"condition": {"op": "gt", "args": [{"op": "const"}]}}]}
    loc = ("rules", 0, "condition", "gt", "args", 0, "const", "value")
    assert json_path(document, loc) == "rules[0].condition.args[0].value"
    assert json_path(document, ()) == "<root>"


def test_the_schema_module_loads_nothing_of_the_project_nor_lark() -> None:
    code = (
        "import sys, vigie.ir_schema; "
        "print(sorted(m for m in sys.modules if m.startswith('vigie.') or m.split('.')[0] == "
        "'lark'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "['vigie.ir_schema']"


def test_module_doctests() -> None:
    import doctest

    from vigie import ir_schema

    result = doctest.testmod(ir_schema)
    assert result.attempted > 0 and result.failed == 0


def test_set_terms_may_carry_exact_codes_and_routes(small_ir: dict[str, Any]) -> None:
    # docs/rules-design.md: "exact" and "routes" are optional in a term
    ir = copy.deepcopy(small_ir)
    ir["sets"]["potassium_binders"]["terms"] = [
        {"include": [], "exclude": [], "exact": ["V03AE"]},
        {"include": ["V03AE01"], "exclude": [], "routes": ["oral", "rectal"]},
    ]
    assert len(load_pack(ir).rules) == len(ir["rules"])
