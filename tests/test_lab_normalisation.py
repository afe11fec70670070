"""The same lab result, sent by every feed, gives the same fact.

Each case is one result (code, value, unit, reference range, abnormal flag) written in each
format: an HL7 v2 ORU OBX, a FHIR Observation (validated and fast path), an HPRIM Santé OBX, a
CSV row, and for weights a PN13 ``Rens_compl``. The expected fact is written from the
terminology tables (``lab_codes.csv``, ``unit_conversions.csv``) and from the behaviour
``vigie.connectors.labs`` documents, not from running the code. Qualitative results follow the
standards' codes: SNOMED CT 10828004 is "Positive", 260385009 "Negative"; HL7 table 0078 /
v3 ObservationInterpretation ``POS`` is "Positive"; LOINC 2106-3 is hCG [Presence] in Urine.
A coded answer is sent as HL7 CWE, FHIR valueCodeableConcept and HPRIM CE; a CSV row carries
its label as text.

Fields left out of the comparison, and why:

- ``source`` and ``fact_id``: where the fact came from and each feed's own identity scheme.
- ``code.system`` is compared by its short name: each format spells LOINC its way (``LN``,
  ``http://loinc.org``).
- PN13 ``code``: PN13 codes a measurement in its own ``Rens_compl`` table (1 = weight), without
  a label; PN13 carries no lab results, only these measurements (so only the observation cases).
- HL7 v2 flag details start with the field they are about (``OBX[1]-6: ``), finer than
  ``source``: that prefix is checked, then left out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vigie.connectors import hprim, pn13
from vigie.connectors.fhir import connector as fhir
from vigie.connectors.hl7v2 import connector as hl7v2
from vigie.connectors.labs import parse_reference_range
from vigie.connectors.tabular import TabularConnector, load_mapping
from vigie.facts import AnyFact, LabResult, Observation
from vigie.terminology import normalise_system

# unit_conversions.csv: creatinine 1 mg/dL = 88.42 µmol/L; weight 1 g = 0.001 kg.
CREATININE_MG_DL = 88.42
WEIGHT_G = 0.001


@dataclass(frozen=True)
class Result:
    """One result as every feed would send it (``None``: the feed leaves it out)."""

    code: str  # LOINC
    display: str
    value: str
    unit: str | None = None
    low: str | None = None
    high: str | None = None
    abnormal: str | None = None
    pn13_code: str | None = None  # its Rens_compl code, for the measurements PN13 carries
    answer: tuple[str, str] | None = None  # a SNOMED CT coded answer: code, display (= value)

    @property
    def kind(self) -> str:
        return "lab" if self.pn13_code is None else "observation"

    @property
    def numeric(self) -> bool:
        return re.fullmatch(r"[0-9.]+", self.value) is not None

    @property
    def bound(self) -> bool:
        return self.value[0] in "<>"


@dataclass(frozen=True)
class Case:
    name: str
    result: Result
    expected: dict[str, Any]


def expected(kind: str, code: str, display: str | None, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "kind": kind,
        "patient_id": "P1",
        "code": {"system": "LOINC", "code": code, "display": display},
        "time": "2024-01-02T08:00:00",
        "concept": None,
        "value": None,
        "unit": None,
        "original_value": None,
        "original_unit": None,
        "flags": [],
    }
    if kind == "lab":
        base |= {"reference_low": None, "reference_high": None, "abnormal_flag": None}
    return base | fields


def flag(code: str, detail: str) -> dict[str, str]:
    return {"code": code, "detail": detail}


K = Result("2823-3", "Potassium", "5.9", "mmol/L", "3.5", "5.1", "H")
CREA = Result("2160-0", "Creatinine", "1.2", "mg/dL", "0.6", "1.1", "H")
WEIGHT = Result("29463-7", "Poids", "72.5", "kg", pn13_code="1")
HCG_URINE = "2106-3"  # LOINC hCG [Presence] in Urine: qualitative, no implied unit

CASES = [
    Case(
        "mapped code in the canonical unit, range and abnormal flag",
        K,
        expected(
            "lab", "2823-3", "Potassium", concept="potassium", value=5.9, unit="mmol/L",
            original_value="5.9", original_unit="mmol/L", reference_low=3.5,
            reference_high=5.1, abnormal_flag="H",
        ),
    ),
    Case(
        "creatinine mg/dL converted to µmol/L with its range",
        CREA,
        expected(
            "lab", "2160-0", "Creatinine", concept="creatinine",
            value=round(1.2 * CREATININE_MG_DL, 6), unit="µmol/L", original_value="1.2",
            original_unit="mg/dL", reference_low=round(0.6 * CREATININE_MG_DL, 6),
            reference_high=round(1.1 * CREATININE_MG_DL, 6), abnormal_flag="H",
        ),
    ),
    Case(
        "no unit sent: the code's implied unit (LOINC 2160-0 is mg/dL)",
        Result("2160-0", "Creatinine", "1.2", None, "0.6", "1.1", "H"),
        expected(
            "lab", "2160-0", "Creatinine", concept="creatinine",
            value=round(1.2 * CREATININE_MG_DL, 6), unit="µmol/L", original_value="1.2",
            reference_low=round(0.6 * CREATININE_MG_DL, 6),
            reference_high=round(1.1 * CREATININE_MG_DL, 6), abnormal_flag="H",
        ),
    ),
    Case(
        "unmapped code: kept as received, flagged",
        Result("99999-9", "Ferritine", "250", "µg/L", "30", "400", "N"),
        expected(
            "lab", "99999-9", "Ferritine", value=250.0, unit="µg/L", original_value="250",
            original_unit="µg/L", reference_low=30.0, reference_high=400.0, abnormal_flag="N",
            flags=[
                flag(
                    "unmapped_code",
                    "code '99999-9' is not mapped to a lab or observation concept",
                )
            ],
        ),
    ),
    Case(
        "unknown unit: no value, no unit, no range, flagged; the concept's unit is not assumed",
        Result("2823-3", "Potassium", "5.9", "mg/furlong", "3.5", "5.1", "H"),
        expected(
            "lab", "2823-3", "Potassium", concept="potassium", original_value="5.9",
            original_unit="mg/furlong", abnormal_flag="H",
            flags=[
                flag(
                    "unknown_unit",
                    "unit 'mg/furlong' cannot be converted to mmol/L for potassium",
                )
            ],
        ),
    ),
    Case(
        "non-numeric value: text kept, flagged; the range stays in the implied unit",
        Result("2823-3", "Potassium", "hémolysé", None, "3.5", "5.1"),
        expected(
            "lab", "2823-3", "Potassium", concept="potassium", unit="mmol/L",
            original_value="hémolysé", reference_low=3.5, reference_high=5.1,
            flags=[flag("non_numeric_value", "'hémolysé' is not a number")],
        ),
    ),
    Case(
        "a bound (>60) is not a number",
        Result("62238-1", "DFG", ">60", "mL/min/1.73m2", abnormal="N"),
        expected(
            "lab", "62238-1", "DFG", concept="egfr", unit="mL/min/1.73m2",
            original_value=">60", original_unit="mL/min/1.73m2", abnormal_flag="N",
            flags=[flag("non_numeric_value", "'>60' is not a number")],
        ),
    ),
    Case(
        "weight in kg",
        WEIGHT,
        expected(
            "observation", "29463-7", "Poids", concept="weight", value=72.5, unit="kg",
            original_value="72.5", original_unit="kg",
        ),
    ),
    Case(
        "weight in g converted to kg",
        Result("29463-7", "Poids", "72500", "g", pn13_code="1"),
        expected(
            "observation", "29463-7", "Poids", concept="weight",
            value=round(72500 * WEIGHT_G, 6), unit="kg", original_value="72500",
            original_unit="g",
        ),
    ),
    Case(
        "weight without unit: kg implied",
        Result("29463-7", "Poids", "72.5", None, pn13_code="1"),
        expected(
            "observation", "29463-7", "Poids", concept="weight", value=72.5, unit="kg",
            original_value="72.5",
        ),
    ),
    Case(
        "weight in an unknown unit",
        Result("29463-7", "Poids", "72.5", "stone", pn13_code="1"),
        expected(
            "observation", "29463-7", "Poids", concept="weight", original_value="72.5",
            original_unit="stone",
            flags=[flag("unknown_unit", "unit 'stone' cannot be converted to kg for weight")],
        ),
    ),
    Case(
        "coded positive hCG (SNOMED 10828004 Positive): a usable value, no flag",
        Result(HCG_URINE, "hCG urinaire", "Positive", answer=("10828004", "Positive")),
        expected(
            "lab", HCG_URINE, "hCG urinaire", concept="hcg", original_value="Positive",
            qualitative="positive",
        ),
    ),
    Case(
        "coded negative hCG (SNOMED 260385009 Negative)",
        Result(HCG_URINE, "hCG urinaire", "Negative", answer=("260385009", "Negative")),
        expected(
            "lab", HCG_URINE, "hCG urinaire", concept="hcg", original_value="Negative",
            qualitative="negative",
        ),
    ),
    Case(
        "French written result: 'négatif' is negative",
        Result(HCG_URINE, "hCG urinaire", "négatif"),
        expected(
            "lab", HCG_URINE, "hCG urinaire", concept="hcg", original_value="négatif",
            qualitative="negative",
        ),
    ),
    Case(
        "a value that says neither, with the interpretation POS: positive from the flag",
        Result(HCG_URINE, "hCG urinaire", "+", abnormal="POS"),
        expected(
            "lab", HCG_URINE, "hCG urinaire", concept="hcg", original_value="+",
            abnormal_flag="POS", qualitative="positive",
        ),
    ),
    Case(
        "the value wins over a contradicting interpretation",
        Result(HCG_URINE, "hCG urinaire", "Négatif", abnormal="POS"),
        expected(
            "lab", HCG_URINE, "hCG urinaire", concept="hcg", original_value="Négatif",
            abnormal_flag="POS", qualitative="negative",
        ),
    ),
    Case(
        "an unlisted word is never guessed: no qualitative value, flagged",
        Result(HCG_URINE, "hCG urinaire", "douteux", abnormal="A"),
        expected(
            "lab", HCG_URINE, "hCG urinaire", concept="hcg", original_value="douteux",
            abnormal_flag="A", flags=[flag("non_numeric_value", "'douteux' is not a number")],
        ),
    ),
    Case(
        "unmapped code with a written positive: read as well (H. pylori Ab presence)",
        Result("22310-7", "Helicobacter pylori Ab", "Positive", abnormal="A"),
        expected(
            "lab", "22310-7", "Helicobacter pylori Ab", original_value="Positive",
            abnormal_flag="A", qualitative="positive",
            flags=[
                flag(
                    "unmapped_code",
                    "code '22310-7' is not mapped to a lab or observation concept",
                )
            ],
        ),
    ),
]  # fmt: skip


# The result in each format ------------------------------------------------------------------


def hl7v2_facts(result: Result, tmp_path: Path) -> list[AnyFact]:
    if result.numeric:
        value_type, value = "NM", result.value
    elif result.bound:
        value_type, value = "SN", f"{result.value[0]}^{result.value[1:]}"
    elif result.answer:
        value_type, value = "CWE", f"{result.answer[0]}^{result.answer[1]}^SCT"
    else:
        value_type, value = "ST", result.value
    segments = [
        "MSH|^~\\&|LAB|HOSP|VIGIE|PHARMA|20240102080000||ORU^R01^ORU_R01|MSG1|P|2.5"
        "|||||FRA|UNICODE UTF-8",
        "PID|1||P1^^^HOSP^PI||DOE^JANE||19500101|F",
        "OBR|1|ORD1|FIL1|PANEL^Panel^L|||20240102070000",
        f"OBX|1|{value_type}|{result.code}^{result.display}^LN||{value}|{result.unit or ''}"
        f"|{range_text(result)}|{result.abnormal or ''}|||F|||20240102080000",
    ]
    (raw,) = hl7v2.split("result.hl7", "\r".join(segments).encode())
    return hl7v2.parse(raw).facts


def range_text(result: Result) -> str:
    if result.low and result.high:
        return f"{result.low}-{result.high}"
    return f"<{result.high}" if result.high else (f">{result.low}" if result.low else "")


def fhir_resource(result: Result) -> dict[str, Any]:
    category = "laboratory" if result.kind == "lab" else "vital-signs"
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "category": [{"coding": [{"code": category}]}],
        "code": {
            "coding": [
                {"system": "http://loinc.org", "code": result.code, "display": result.display}
            ]
        },
        "subject": {"reference": "Patient/P1"},
        "effectiveDateTime": "2024-01-02T08:00:00Z",
    }
    if result.numeric or result.bound:
        quantity: dict[str, Any] = {"value": json.loads(result.value.lstrip("<>"))}
        if result.bound:
            quantity["comparator"] = result.value[0]
        resource["valueQuantity"] = quantity | fhir_unit(result)
    elif result.answer:
        code, display = result.answer
        coding = {"system": "http://snomed.info/sct", "code": code, "display": display}
        resource["valueCodeableConcept"] = {"coding": [coding]}
    else:
        resource["valueString"] = result.value
    ends = {"low": result.low, "high": result.high}
    reference_range = {
        end: {"value": json.loads(text)} | fhir_unit(result) for end, text in ends.items() if text
    }
    if reference_range:
        resource["referenceRange"] = [reference_range]
    if result.abnormal:
        resource["interpretation"] = [{"coding": [{"code": result.abnormal}]}]
    return resource


def fhir_unit(result: Result) -> dict[str, str]:
    return {"unit": result.unit, "code": result.unit} if result.unit else {}


def fhir_facts(validate: bool) -> Callable[[Result, Path], list[AnyFact]]:
    def facts(result: Result, tmp_path: Path) -> list[AnyFact]:
        content = json.dumps(fhir_resource(result)).encode()
        (raw,) = fhir.split("observation.json", content)
        outcome = fhir.parse(raw, validate=validate)
        assert not outcome.errors
        return outcome.facts

    return facts


def hprim_facts(result: Result, tmp_path: Path) -> list[AnyFact]:
    value_type, value = ("NM" if result.numeric or result.bound else "TX"), result.value
    if result.answer:
        value_type, value = "CE", f"{result.answer[0]}~{result.answer[1]}~SCT"
    records = [
        "H|~^\\&|RESULT.HPR||LAB||ORU|||ME||P|H2.2~C|202401020800",
        "P|1|P1|||DOE~JANE||19500101|F",
        "OBR|1||S1||||202401020700",
        f"OBX|1|{value_type}|{result.code}~{result.display}~LN||{value}"
        f"|{result.unit or ''}|{range_text(result)}|{result.abnormal or ''}|||F|||202401020800",
        "L|1",
    ]
    (raw,) = hprim.split("result.hpr", "\r".join(records).encode())
    outcome = hprim.parse(raw)
    assert not outcome.errors
    return outcome.facts


# Vigie's canonical CSV layout (vigie-synthetic.toml) plus the display and abnormal flag columns
# the mapping format offers for labs: the synthetic export leaves them out.
CSV_MAPPING = """
name = "lab-normalisation"
[defaults]
delimiter = ","
decimal = "."
date_formats = ["iso"]
[labs]
file = ["labs*.csv"]
[labs.columns]
{columns}
reference_low = "reference_low"
reference_high = "reference_high"
abnormal_flag = "abnormal_flag"
[observations]
file = ["observations*.csv"]
[observations.columns]
{columns}
"""
CSV_COLUMNS = ("patient_id", "code_system", "code", "display", "value", "unit", "time")


def csv_facts(result: Result, tmp_path: Path) -> list[AnyFact]:
    columns = "\n".join(f'{name} = "{name}"' for name in CSV_COLUMNS)
    mapping_path = tmp_path / "mapping.toml"
    mapping_path.write_text(CSV_MAPPING.format(columns=columns), encoding="utf-8")
    connector = TabularConnector(load_mapping(mapping_path))
    row = ["P1", "LOINC", result.code, result.display, result.value, result.unit or ""]
    row.append("2024-01-02T08:00:00+00:00")
    header = list(CSV_COLUMNS)
    if result.kind == "lab":
        header += ["reference_low", "reference_high", "abnormal_flag"]
        row += [result.low or "", result.high or "", result.abnormal or ""]
    content = f"{','.join(header)}\n{','.join(row)}\n".encode()
    (raw,) = connector.split(f"{result.kind}s.csv", content)
    outcome = connector.parse(raw)
    assert not outcome.errors
    return outcome.facts


def pn13_facts(result: Result, tmp_path: Path) -> list[AnyFact]:
    document = f"""<?xml version="1.0" encoding="UTF-8"?>
<Messages>
  <M_Prescription_médicaments>
    <Patient><Ipp>P1</Ipp><Sexe>F</Sexe></Patient>
    <Prescription>
      <Dh_prescription>20240102080000</Dh_prescription>
      <Rens_compl>
        <Dh_rens_compl>20240102080000</Dh_rens_compl>
        <Code_rens_compl>{result.pn13_code}</Code_rens_compl>
        <Valeur_rens_compl>
          <Nombre>{result.value}</Nombre>
          <Unité>{result.unit or ""}</Unité>
        </Valeur_rens_compl>
      </Rens_compl>
    </Prescription>
  </M_Prescription_médicaments>
</Messages>
"""
    (raw,) = pn13.split("prescription.xml", document.encode())
    outcome = pn13.parse(raw)
    assert not outcome.errors
    return outcome.facts


FEEDS: dict[str, Callable[[Result, Path], list[AnyFact]]] = {
    "hl7v2": hl7v2_facts,
    "fhir": fhir_facts(validate=True),
    "fhir-fast-path": fhir_facts(validate=False),
    "hprim": hprim_facts,
    "csv": csv_facts,
    "pn13": pn13_facts,
}
HL7_FIELD = re.compile(r"OBX\[1\]-[356]: ")


def comparable(feed: str, fact: LabResult | Observation) -> dict[str, Any]:
    """The fact's fields, less those a feed carries its own way (see the module docstring)."""
    fields = fact.model_dump(mode="json", exclude={"source", "fact_id"})
    fields["kind"] = fact.kind
    code = fields["code"]
    code["system"] = normalise_system(code["system"])
    if feed == "pn13":
        del fields["code"]
    if feed == "hl7v2":
        for remark in fields["flags"]:
            assert HL7_FIELD.match(remark["detail"]), remark
            remark["detail"] = HL7_FIELD.sub("", remark["detail"])
    return fields


def the_result(facts: list[AnyFact]) -> LabResult | Observation:
    (found,) = [fact for fact in facts if isinstance(fact, LabResult | Observation)]
    return found


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_feed_gives_the_same_fact(case: Case, tmp_path: Path) -> None:
    feeds = [feed for feed in FEEDS if feed != "pn13" or case.result.pn13_code is not None]
    facts = {
        feed: comparable(feed, the_result(FEEDS[feed](case.result, tmp_path))) for feed in feeds
    }
    for feed, fields in facts.items():
        wanted = dict(case.expected)
        if feed == "pn13":
            del wanted["code"]
        assert fields == wanted, feed


@pytest.mark.parametrize(
    ("text", "bounds"),
    [
        ("3.5-5.1", (3.5, 5.1)),
        ("3,5 - 5,1 mmol/L", (3.5, 5.1)),
        ("10 à 40", (10.0, 40.0)),
        ("-2 - 2", (-2.0, 2.0)),
        ("<5", (None, 5.0)),
        ("≤ 5", (None, 5.0)),
        (">60", (60.0, None)),
        (">= 60 mL/min", (60.0, None)),
        ("7 - 5.7", None),  # reversed: unreadable, never swapped
        ("normal", None),
        ("", None),
    ],
)
def test_text_reference_ranges(text: str, bounds: tuple[float | None, float | None] | None) -> None:
    reference = parse_reference_range(text)
    assert (None if reference is None else (reference.low, reference.high)) == bounds
