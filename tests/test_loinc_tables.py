"""Every LOINC code in the terminology tables is well formed and names what the table says.

Two checks, from outside the tables:

- syntax: the shape ``digits-check`` and the Mod 10 check digit (``vigie.terminology.loinc``),
  the implementation itself checked against every LOINC code of the reference data;
- meaning: for each table code, the LOINC name must contain the keywords of the concept the table
  maps it to (``CONCEPT_KEYWORDS``). Names come from two sources: the displays sent with the code
  in the reference data (FHIR ``coding`` with system ``http://loinc.org``, HL7 v2 ``code^text^LN``)
  and ``LOINC_NAMES``, the Long Common Names of the LOINC database (loinc.org) for table codes the
  reference data does not carry. A code found in neither is counted as unchecked.
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vigie.terminology import DATA_DIR, LOINC, normalise_system
from vigie.terminology.loinc import is_valid_loinc, loinc_check_digit

# Codes of the reference data whose check digit is wrong in the source itself (kept as shipped).
# REF-I14-01.hl7 sends "22311-7^Helicobacter pylori Ab[Presence] in Serum"; that test's code is
# 22310-7 (check digit 7, sent elsewhere in the same corpus); 22311 would take check digit 5.
REFERENCE_DEFECTS = {"22311-7"}

# Concept -> words its LOINC names must contain (lower case; every group must have one match).
CONCEPT_KEYWORDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "creatinine": (("creatinine",),),
    "egfr": (("glomerular filtration rate",),),
    "creatinine_clearance": (("creatinine",), ("clearance",)),
    "potassium": (("potassium",),),
    "sodium": (("sodium",),),
    "inr": (("inr",),),
    "glucose": (("glucose",),),
    "platelets": (("platelets",),),
    "neutrophils": (("neutrophils",),),
    "ck": (("creatine kinase",),),
    "alt": (("alanine aminotransferase",),),
    "digoxin": (("digoxin",),),
    "vancomycin": (("vancomycin",),),
    "gentamicin": (("gentamicin",),),
    "amikacin": (("amikacin",),),
    "tobramycin": (("tobramycin",),),
    "hcg": (("choriogonadotropin",),),
    "weight": (("body weight",),),
    "height": (("body height",),),
    "qtc": (("q-t interval corrected", "qtc"),),
}

# Concepts whose names must not name another analyte (creatinine must not be a clearance).
CONCEPT_EXCLUDES: dict[str, tuple[str, ...]] = {"creatinine": ("clearance", "filtration")}

# LOINC Long Common Names (LOINC database, loinc.org; LOINC is (c) Regenstrief Institute) of
# table codes that the reference data does not carry.
LOINC_NAMES: dict[str, str] = {
    "2160-0": "Creatinine [Mass/volume] in Serum or Plasma",
    "14682-9": "Creatinine [Moles/volume] in Serum or Plasma",
    "59826-8": "Creatinine [Moles/volume] in Blood",
    "62238-1": "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, "
    "Plasma or Blood by Creatinine-based formula (CKD-EPI)",
    "98979-8": "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, "
    "Plasma or Blood by Creatinine-based formula (CKD-EPI 2021)",
    "48642-3": "Glomerular filtration rate/1.73 sq M.predicted among non-blacks [Volume "
    "Rate/Area] in Serum, Plasma or Blood by Creatinine-based formula (MDRD)",
    "48643-1": "Glomerular filtration rate/1.73 sq M.predicted among blacks [Volume Rate/Area] "
    "in Serum, Plasma or Blood by Creatinine-based formula (MDRD)",
    "77147-7": "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, "
    "Plasma or Blood by Creatinine-based formula (MDRD)",
    "88293-6": "Glomerular filtration rate/1.73 sq M.predicted among blacks [Volume Rate/Area] "
    "in Serum, Plasma or Blood by Creatinine-based formula (CKD-EPI)",
    "88294-4": "Glomerular filtration rate/1.73 sq M.predicted among non-blacks [Volume "
    "Rate/Area] in Serum, Plasma or Blood by Creatinine-based formula (CKD-EPI)",
    "35591-7": "Creatinine renal clearance predicted by Cockcroft-Gault formula",
    "2823-3": "Potassium [Moles/volume] in Serum or Plasma",
    "2951-2": "Sodium [Moles/volume] in Serum or Plasma",
    "6301-6": "INR in Platelet poor plasma by Coagulation assay",
    "34714-6": "INR in Blood by Coagulation assay",
    "38875-1": "INR in Platelet poor plasma or blood by Coagulation assay",
    "46418-0": "INR in Capillary blood by Coagulation assay",
    "2345-7": "Glucose [Mass/volume] in Serum or Plasma",
    "15074-8": "Glucose [Moles/volume] in Blood",
    "14749-6": "Glucose [Moles/volume] in Serum or Plasma",
    "1558-6": "Fasting glucose [Mass/volume] in Serum or Plasma",
    "1554-5": "Glucose [Mass/volume] in Serum or Plasma --12 hours fasting",
    "41653-7": "Glucose [Mass/volume] in Capillary blood by Glucometer",
    "778-1": "Platelets [#/volume] in Blood by Manual count",
    "751-8": "Neutrophils [#/volume] in Blood by Automated count",
    "2157-6": "Creatine kinase [Enzymatic activity/volume] in Serum or Plasma",
    "1743-4": "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma by "
    "With P-5'-P",
    "76625-3": "Alanine aminotransferase [Enzymatic activity/volume] in Blood",
    "10535-3": "Digoxin [Mass/volume] in Serum or Plasma",
    "20578-1": "Vancomycin [Mass/volume] in Serum or Plasma",
    "4092-3": "Vancomycin [Mass/volume] in Serum or Plasma --trough",
    "35668-3": "Gentamicin [Mass/volume] in Serum or Plasma --random",
    "3665-7": "Gentamicin [Mass/volume] in Serum or Plasma --trough",
    "35669-1": "Amikacin [Mass/volume] in Serum or Plasma --random",
    "3319-1": "Amikacin [Mass/volume] in Serum or Plasma --peak",
    "3321-7": "Amikacin [Mass/volume] in Serum or Plasma --trough",
    "35670-9": "Tobramycin [Mass/volume] in Serum or Plasma --random",
    "4059-2": "Tobramycin [Mass/volume] in Serum or Plasma --trough",
    "2106-3": "Choriogonadotropin [Presence] in Urine",
    "21198-7": "Choriogonadotropin.beta subunit [Units/volume] in Serum or Plasma",
    "3141-9": "Body weight Measured",
    "3142-7": "Body weight (Stated)",
    "8335-2": "Body weight Estimated",
    "8306-3": "Body height --lying",
    "3137-7": "Body height Measured",
    "8636-3": "Q-T interval corrected",
    "76635-2": "Q-T interval corrected based on Bazett formula",
    "76634-5": "Q-T interval corrected based on Fridericia formula",
    "8634-8": "Q-T interval",
}

# The LOINC property (the bracket of a Long Common Name) -> the implied units it allows.
PROPERTY_UNITS: dict[str, set[str]] = {
    "Mass/volume": {"mg/dL", "mg/L", "g/L", "µg/L"},
    "Moles/volume": {"mmol/L", "µmol/L"},
    "#/volume": {"G/L"},
    "Enzymatic activity/volume": {"U/L"},
    "Units/volume": {"IU/L"},
    "Volume Rate/Area": {"mL/min/1.73m2"},
    "Presence": {""},  # qualitative: a bare number has no unit to imply
}

_LOINC_SHAPE = re.compile(r"(?<![\w.-])\d{1,7}-\d(?![\d.-])")
# LOINC answer codes (LA6576-8 Positive) and answer lists (LL360-9): another number space,
# whose check digit is not the Mod 10 of a test code; checked for shape only.
_LOINC_ANSWER = re.compile(r"^L[AL][1-9]\d{0,6}-\d$")


def _table_files() -> list[Path]:
    return sorted(DATA_DIR.glob("*.csv"))


def _table_loincs() -> list[tuple[str, str, str]]:
    """(file, code, concept or '') for every LOINC of the tables: rows whose system is LOINC,
    and codes cited in comment lines."""
    return [(file, code, concept) for file, code, concept, _ in _table_rows()]


def _table_rows() -> list[tuple[str, str, str, str | None]]:
    """(file, code, concept, implied unit) as ``_table_loincs``; the unit is None on comments
    and in tables without an ``implied_unit`` column."""
    found: list[tuple[str, str, str, str | None]] = []
    for path in _table_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        for line in lines:
            if line.startswith("#"):  # every code of that shape in a table comment is a LOINC
                found.extend((path.name, code, "", None) for code in _LOINC_SHAPE.findall(line))
        rows = csv.DictReader(line for line in lines if not line.startswith("#"))
        if rows.fieldnames is None or not {"system", "code"} <= set(rows.fieldnames):
            continue
        for row in rows:
            if normalise_system(row["system"]) == normalise_system(LOINC):
                unit = row.get("implied_unit")
                found.append((path.name, row["code"], row.get("concept") or "", unit))
    return found


def _walk_codings(node: Any) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        if node.get("system") in ("http://loinc.org", "https://loinc.org") and "code" in node:
            yield str(node["code"]), str(node.get("display") or "")
        for value in node.values():
            yield from _walk_codings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_codings(value)


_HL7_LN = re.compile(r"(?:^|[|~])(\d{1,7}-\d)\^([^|^~]*)\^LN(?=[|^~]|$)")


def _reference_names(root: Path) -> dict[str, set[str]]:
    """LOINC code -> the displays the reference data sends with it (empty ones left out)."""
    names: dict[str, set[str]] = defaultdict(set)
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix == ".json":
            documents: list[Any] = [json.loads(path.read_text(encoding="utf-8"))]
        elif path.suffix == ".ndjson":
            text = path.read_text(encoding="utf-8")
            documents = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif path.suffix == ".hl7":
            text = path.read_text(encoding="utf-8", errors="replace")
            for segment in re.split(r"[\r\n]+", text):
                for code, display in _HL7_LN.findall(segment):
                    names[code].add(display)
            continue
        else:
            continue
        for document in documents:
            for code, display in _walk_codings(document):
                names[code].add(display)
    return {code: {d for d in displays if d.strip()} for code, displays in names.items()}


@pytest.fixture(scope="module")
def reference_names(shared_data: Path) -> dict[str, set[str]]:
    return _reference_names(shared_data)


def _consistent(concept: str, name: str) -> bool:
    text = name.lower().replace("\u200b", "")
    if any(word in text for word in CONCEPT_EXCLUDES.get(concept, ())):
        return False
    return all(any(word in text for word in group) for group in CONCEPT_KEYWORDS[concept])


# Syntax ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "check"),
    # LOINC Users' Guide worked example (12345 -> 5), and codes of its published tables.
    [("12345", 5), ("2160", 0), ("14682", 9), ("29463", 7), ("8302", 2), ("62238", 1)],
)
def test_check_digit_examples(base: str, check: int) -> None:
    assert loinc_check_digit(base) == check


def test_check_digit_against_reference_data(reference_names: dict[str, set[str]]) -> None:
    codes = set(reference_names)
    assert len(codes) > 100  # the corpus is read (115 distinct codes on 2026-12-06)
    failing = {code for code in codes if not is_valid_loinc(code)}
    assert failing == REFERENCE_DEFECTS


def test_check_digit_detects_single_digit_errors() -> None:
    # Mod 10 catches every single-digit substitution and the check digit must be one of ten.
    for code in ("2160-0", "35668-3", "8302-2"):
        base, check = code.split("-")
        for i in range(len(base)):
            for digit in "0123456789":
                if digit != base[i]:
                    wrong = base[:i] + digit + base[i + 1 :]
                    assert not is_valid_loinc(f"{wrong}-{check}")


@pytest.mark.parametrize("code", ["", "2160", "2160-", "02160-0", "2160-00", "LP7795-9", "2160‑0"])
def test_malformed_codes(code: str) -> None:
    assert not is_valid_loinc(code)


def test_tables_carry_loinc_codes() -> None:
    files = {file for file, _, concept in _table_loincs() if concept}
    assert "lab_codes.csv" in files
    assert len(_table_loincs()) > 50


@pytest.mark.parametrize(("file", "code", "concept"), _table_loincs())
def test_table_loinc_well_formed(file: str, code: str, concept: str) -> None:
    if code.startswith(("LA", "LL")):
        assert _LOINC_ANSWER.match(code), f"{file}: {code} is not a LOINC answer code"
        return
    assert is_valid_loinc(code), f"{file}: {code} ({concept or 'comment'}) is not a valid LOINC"


# Meaning ---------------------------------------------------------------------------------------


def test_every_table_concept_has_keywords() -> None:
    concepts = {concept for _, _, concept in _table_loincs() if concept}
    assert concepts <= set(CONCEPT_KEYWORDS), concepts - set(CONCEPT_KEYWORDS)


def test_keywords_tell_the_aminoglycosides_apart() -> None:
    # The defect this test exists for: an amikacin level filed as gentamicin.
    assert not _consistent("gentamicin", LOINC_NAMES["35669-1"])
    assert not _consistent("amikacin", LOINC_NAMES["35668-3"])
    assert _consistent("gentamicin", LOINC_NAMES["35668-3"])
    assert not _consistent("creatinine", LOINC_NAMES["35591-7"])


def test_table_loinc_names_match_concepts(reference_names: dict[str, set[str]]) -> None:
    wrong: list[str] = []
    from_reference = checked = unchecked = 0
    for file, code, concept in _table_loincs():
        if not concept:
            continue
        names = reference_names.get(code, set())
        from_reference += bool(names)
        if code in LOINC_NAMES:
            names = names | {LOINC_NAMES[code]}
        checked += bool(names)
        unchecked += not names
        wrong.extend(
            f"{file}: {code} mapped to {concept!r} but named {name!r}"
            for name in sorted(names)
            if not _consistent(concept, name)
        )
    assert not wrong, "\n".join(wrong)
    # Figures of 2026-12-06 (lab_codes.csv, 59 LOINC rows): 11 codes carry a display in the
    # reference data, the 48 others are named in LOINC_NAMES, none is unchecked. The floors keep
    # the check from emptying silently.
    assert from_reference >= 10
    assert checked >= 59 and unchecked == 0, (checked, unchecked)


def test_implied_units_fit_the_loinc_property() -> None:
    wrong: list[str] = []
    for file, code, concept, unit in _table_rows():
        match = re.search(r"\[([^\]]+)\]", LOINC_NAMES.get(code, ""))
        if unit is None or match is None:
            continue
        allowed = PROPERTY_UNITS[match.group(1)]
        if unit.strip() not in allowed:
            wrong.append(
                f"{file}: {code} ({concept}) implies {unit!r}, its property is "
                f"{match.group(1)}: {sorted(allowed)}"
            )
    assert not wrong, "\n".join(wrong)
