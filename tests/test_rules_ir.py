"""Rule IR: golden IR of small packs, determinism, the default pack, the documented node set.

Golden IR files are ``tests/golden/rules/*.ir.json`` next to their ``*.rules`` source;
regenerate after a deliberate change with
``VIGIE_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/test_rules_ir.py -k golden`` and review.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vigie import settings as vigie_settings
from vigie.rules import compile_pack, dumps_ir
from vigie.rules.ir import IR_OPS, iter_ir_nodes

ROOT = Path(__file__).parents[1]
GOLDEN = Path(__file__).parent / "golden" / "rules"
DEFAULT_PACK = ROOT / "rules" / "packs" / "default.rules"
DESIGN = ROOT / "docs" / "rules-design.md"
REGENERATE = vigie_settings.value("regenerate_golden")


def compile_file(path: Path, name: str | None = None) -> dict[str, Any]:
    ir, diagnostics = compile_pack(path.read_text(encoding="utf-8"), name or path.name)
    assert ir is not None, diagnostics
    return ir


@pytest.fixture(scope="module")
def default_ir() -> dict[str, Any]:
    return compile_file(DEFAULT_PACK, "rules/packs/default.rules")


@pytest.fixture(scope="module")
def rules_by_id(default_ir: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {rule["id"]: rule for rule in default_ir["rules"]}


# Golden IR ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", sorted(GOLDEN.glob("*.rules")), ids=lambda p: p.stem)
def test_golden_ir(source: Path) -> None:
    text = dumps_ir(compile_file(source))
    expected = source.with_suffix(".ir.json")
    if REGENERATE:
        expected.write_text(text, encoding="utf-8")
    assert text == expected.read_text(encoding="utf-8")


def test_hyperkalaemia_ir_reads_like_the_rule() -> None:
    ir = compile_file(GOLDEN / "hyperkalaemia.rules")
    (rule,) = ir["rules"]
    assert rule["source"] == {"file": "hyperkalaemia.rules", "line": 11}
    assert (rule["version"], rule["severity"], rule["level"]) == (2, "major", 1)
    assert rule["problem"] == {"code": "7", "display": "Effet indésirable"}
    assert rule["bindings"][0] == {
        "name": "d",
        "kind": "drug",
        "set": "potassium_raising",
        "routes": None,
        "span": [16, 5],
    }
    window = rule["bindings"][1]["expr"]["window"]["within"]
    assert window["op"] == "convert" and window["factor"] == 3600.0
    escalation = rule["escalations"][0]
    assert escalation["severity"] == "critical"
    assert escalation["condition"]["args"][1]["value"] == 6.0
    assert rule["depends_on"] == {"kinds": ["lab", "medication_order"], "concepts": ["potassium"]}
    assert [part.get("text") for part in rule["message"]] == [
        "K+ ",
        None,
        " le ",
        None,
        " sous ",
        None,
    ]


# Determinism -------------------------------------------------------------------------------------


def test_compiling_twice_gives_identical_bytes() -> None:
    first = dumps_ir(compile_file(DEFAULT_PACK))
    second = dumps_ir(compile_file(DEFAULT_PACK))
    assert first == second


@pytest.mark.slow
def test_identical_bytes_across_processes_and_hash_seeds() -> None:
    script = (
        "import sys, rules; from pathlib import Path;"
        "text = Path(sys.argv[1]).read_text(encoding='utf-8');"
        "sys.stdout.write(rules.dumps_ir(rules.compile_pack(text, 'p.rules')[0]))"
    )
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONIOENCODING": "utf-8"}
        done = subprocess.run(
            [sys.executable, "-c", script, str(DEFAULT_PACK)],
            capture_output=True,
            check=True,
            env=env,
            cwd=ROOT,
        )
        outputs.add(done.stdout)
    assert len(outputs) == 1


def test_ir_round_trips_through_json(default_ir: dict[str, Any]) -> None:
    assert json.loads(dumps_ir(default_ir)) == default_ir


def test_pack_identity(default_ir: dict[str, Any]) -> None:
    text = DEFAULT_PACK.read_text(encoding="utf-8")
    assert default_ir["ir_version"] == 1
    assert default_ir["pack"] == {
        "name": "vigie-default",
        "version": "1.0.0",
        "file": "rules/packs/default.rules",
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }


# The default pack --------------------------------------------------------------------------------


def catalogue_rule_ids(shared_data: Path) -> set[str]:
    catalogue = (shared_data.parent / "rule-catalogue.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| ([a-z]+\.[a-z0-9_]+) \|", catalogue, re.MULTILINE))


def test_default_pack_has_every_catalogue_rule(
    shared_data: Path, rules_by_id: dict[str, dict[str, Any]]
) -> None:
    expected = catalogue_rule_ids(shared_data)
    assert len(expected) >= 35
    assert expected <= set(rules_by_id)


def test_default_rules_are_complete(rules_by_id: dict[str, dict[str, Any]]) -> None:
    for rule_id, rule in rules_by_id.items():
        assert rule["title"] and rule["reference"], rule_id
        assert rule["problem"]["code"] and rule["intervention"]["code"], rule_id
        assert rule["severity"] in {"critical", "major", "moderate", "minor"}, rule_id
        assert any("expr" in part for part in rule["message"]), f"{rule_id} quotes no value"
        assert rule["depends_on"]["kinds"], rule_id


@pytest.mark.parametrize(
    ("rule_id", "problem", "intervention", "severity"),
    [
        ("renal.metformin_egfr", "1", "2", "major"),
        ("bio.hyperkalaemia", "7", "2", "major"),
        ("bio.hypoglycaemia", "7", "7", "critical"),
        ("coag.warfarin_nsaid", "6.3", "2", "moderate"),
        ("combo.opioid_benzo", "6.1", "5", "moderate"),
        ("infect.iv_to_oral", "8", "4", "minor"),
        ("coag.vka_no_inr", "10", "5", "moderate"),
    ],
)
def test_sfpc_codes_and_severity(
    rules_by_id: dict[str, dict[str, Any]],
    rule_id: str,
    problem: str,
    intervention: str,
    severity: str,
) -> None:
    rule = rules_by_id[rule_id]
    assert (rule["problem"]["code"], rule["intervention"]["code"]) == (problem, intervention)
    assert rule["severity"] == severity


@pytest.mark.parametrize(
    ("name", "value", "unit", "low", "high"),
    [
        ("k_max", 5.5, "mmol/L", 5.0, 6.5),
        ("metformin_egfr_max", 30.0, "mL/min/1.73m2", 20.0, 45.0),
        ("metformin_egfr_window", 7.0, "d", 1.0, 30.0),
        ("aki_rise_ratio", 1.5, None, 1.2, 2.0),
        ("inr_max", 4.0, None, 3.0, 6.0),
        ("mme_max", 90.0, "MME", 50.0, 200.0),
        ("long_benzo_age_min", 75.0, "years", 65.0, 85.0),
        ("antibiotic_days", 7.0, "d", 5.0, 14.0),
    ],
)
def test_catalogue_cursors(
    default_ir: dict[str, Any], name: str, value: float, unit: str | None, low: float, high: float
) -> None:
    param = default_ir["params"][name]
    assert (param["value"], param["unit"], param["min"], param["max"]) == (value, unit, low, high)


def test_severity_escalations(rules_by_id: dict[str, dict[str, Any]]) -> None:
    escalations = {
        rule_id: [e["severity"] for e in rule["escalations"]]
        for rule_id, rule in rules_by_id.items()
        if rule["escalations"]
    }
    assert escalations == {
        "bio.hyperkalaemia": ["critical"],
        "bio.hyponatraemia": ["critical"],
        "coag.vka_inr_high": ["critical"],
        "coag.warfarin_nsaid": ["critical", "major"],
        "dose.opioid_mme": ["major"],
    }


def test_depends_on_follows_derived_values(rules_by_id: dict[str, dict[str, Any]]) -> None:
    assert rules_by_id["renal.dabigatran"]["depends_on"] == {
        "kinds": ["lab", "medication_order", "observation", "patient"],
        "concepts": ["creatinine", "weight"],
    }
    pregnancy = rules_by_id["combo.pregnancy"]["depends_on"]
    assert {"condition", "pregnancy", "lab", "patient"} <= set(pregnancy["kinds"])
    assert "hcg" in pregnancy["concepts"]
    allergy = rules_by_id["combo.allergy"]["depends_on"]
    assert allergy == {"kinds": ["allergy", "medication_order"], "concepts": []}


def test_definitions_are_inlined_with_their_arguments(
    rules_by_id: dict[str, dict[str, Any]],
) -> None:
    rule = rules_by_id["coag.doac_duplicate"]
    names = {node["name"] for node in iter_ir_nodes(rule["condition"]) if node["op"] == "var"}
    assert names == {"other"}
    sets = {node["set"] for node in iter_ir_nodes(rule["condition"]) if node["op"] == "in_set"}
    assert sets == {"heparin_group", "fondaparinux", "lmwh", "enoxaparin", "unfractionated_heparin"}


def test_nested_sets_are_flattened(default_ir: dict[str, Any]) -> None:
    teratogens = default_ir["sets"]["teratogens"]
    assert teratogens["system"] == "atc"
    terms = teratogens["terms"]
    assert {"B01AA", "C09A", "C09D", "L01BA01", "N03AG01"} <= {
        code for term in terms for code in term["include"]
    }
    # valproate's `exactly N05AX` stays exact in the sets that hold it: not the N05AX class.
    assert [code for term in terms for code in term.get("exact", [])] == ["N05AX"]
    assert not any("N05AX" in term["include"] for term in terms)
    # A nested set keeps its exclusions for its own codes only (nsaid in nephrotoxic).
    nephrotoxic = default_ir["sets"]["nephrotoxic"]["terms"]
    (nsaid_term,) = [term for term in nephrotoxic if "M01A" in term["include"]]
    assert "M01AX05" in nsaid_term["exclude"]
    (plain,) = [term for term in nephrotoxic if "C09A" in term["include"]]
    assert plain["exclude"] == []
    nsaid = default_ir["sets"]["nsaid"]["terms"]
    assert nsaid == [
        {"include": ["M01A"], "exclude": ["M01AX05", "M01AX21", "M01AX24", "M01AX25", "M01AX26"]}
    ]


# The documented node set -------------------------------------------------------------------------


def test_every_node_is_a_documented_op_with_span_and_type(default_ir: dict[str, Any]) -> None:
    for source in [DEFAULT_PACK, *GOLDEN.glob("*.rules")]:
        ir = compile_file(source)
        for node in iter_ir_nodes(ir["rules"]):
            assert node["op"] in IR_OPS, node["op"]
            assert isinstance(node["args"], list)
            assert len(node["span"]) == 2
            assert node.get("type") in {"bool", "number", "time", "order", "lab", "text", "code"}


def test_ops_used_by_the_golden_packs_cover_most_of_the_node_set() -> None:
    used = {
        node["op"]
        for source in [DEFAULT_PACK, *GOLDEN.glob("*.rules")]
        for node in iter_ir_nodes(compile_file(source)["rules"])
    }
    assert IR_OPS - used <= {"height", "div"}


def test_design_document_describes_every_op() -> None:
    design = DESIGN.read_text(encoding="utf-8")
    section = design[design.index("## IR") :]
    first_cells = re.findall(r"^\| (`[^|]+) \|", section, re.MULTILINE)
    documented = {op for cell in first_cells for op in re.findall(r"`([a-z_]+)`", cell)}
    assert documented == IR_OPS
