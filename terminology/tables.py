"""Terminology and units, driven by the data files beside this module.

Every mapping is data, not code:

- ``labs.csv``: the lab and observation concepts (creatinine, potassium, weight, QTc...), their
  kind (``lab`` or ``observation``) and canonical unit.
- ``lab_codes.csv``: code system + code → concept, with the unit the code implies when the
  message does not send one (LOINC 2160-0 is creatinine in mg/dL).
- ``unit_aliases.csv``: spellings met in feeds → one canonical spelling (``mmol/l``, ``mEq/L``
  → ``mmol/L`` where equivalent for monovalent ions is handled by the conversion table).
- ``unit_conversions.csv``: per concept (or ``*`` for any), from unit → to unit, factor.
- ``routes.csv``: route codes and labels (HL7 0162, EDQM, SNOMED, PN13, free text) → canonical
  route (``oral``, ``iv``, ``sc``, ``im``, ``transdermal``...).
- drug tables (``drugs_*.csv[.gz]``, every file of that name is read): CIS/CIP13/CIP7 → ATC
  derived from the BDPM (``build_tables.py`` regenerates them), RxNorm → ATC, and a site table
  for local codes (UCD, hospital formulary), read last and replaceable per site. An empty ATC
  marks a known code that has none (a vaccine, a device): ``drug_atc`` returns ``None`` for it
  and ``drug_known`` tells it from an unknown code.
- ``substances_bdpm.csv.gz``: BDPM substance name → ATC codes of its products, for rules that
  name substances (ANSM interaction thesaurus); read on first use.
- ``drugs_names.csv.gz``, ``drugs_names_aliases.csv``, ``drugs_names_who.csv``: substance names
  → ATC, for a drug line whose code no table maps (``drug_by_name``, ``names.py``); not code
  tables, though their names start with ``drugs_``; read on first use.
- ``compositions_bdpm.csv.gz`` and ``compositions_site.csv`` (then a site's
  ``site_compositions.csv``): the substances and strengths of combination products by CIS,
  CIP13/CIP7 and UCD (``vigie.terminology.compositions``); read on first use.
- ``allergy_atc.csv``: allergen codes (SNOMED, RxNorm) → the ATC codes or class prefixes they
  rule out; empty for food and environmental allergens.
- ``conditions_snomed_icd10.csv``: SNOMED condition codes → ICD-10 for the conditions rules use.
- ``qualitative_results.csv``: coded answers (SNOMED, LOINC answers), interpretation codes (HL7
  table 0078, v3 ObservationInterpretation) and written words (``positif``, ``Not detected``)
  → the qualitative value ``positive`` or ``negative`` of a result.

Nothing is guessed: an unmapped code returns ``None`` and an unknown unit raises
``UnknownUnit``; the connector keeps the fact and flags it.

>>> t = default_terminology()
>>> t.lab_concept("http://loinc.org", "2160-0").name
'creatinine'
>>> t.to_canonical("creatinine", 1.2, "mg/dL")
(106.104, 'µmol/L')
>>> t.drug_atc("http://www.nlm.nih.gov/research/umls/rxnorm", "860975")
'A10BA02'
>>> t.allergy_atc("http://snomed.info/sct", "91936005")
('J01C',)
>>> t.icd10("http://hl7.org/fhir/sid/icd-10", "k920")
'K92.0'
>>> t.qualitative("http://snomed.info/sct", "10828004"), t.qualitative_word(" Négatif. ")
('positive', 'negative')
>>> t.qualitative_word("Not detected (qualifier value)"), t.qualitative_word("Salmonella")
('negative', None)
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from vigie import settings
from vigie.errors import VigieError
from vigie.terminology.compositions import Component, CompositionTable
from vigie.terminology.names import DrugNames, NameMatch
from vigie.terminology.units import read_rows, read_unit_aliases, read_unit_conversions

__all__ = [
    "ATC_SYSTEMS",
    "DATA_DIR",
    "LOINC",
    "Concept",
    "QualitativeResult",
    "Terminology",
    "UnknownUnit",
    "default_terminology",
    "normalise_icd10",
    "normalise_system",
    "ucd13",
]

DATA_DIR = Path(__file__).parent
LOINC = "http://loinc.org"

# Short names for the code systems met in feeds; every lookup goes through these.
_SYSTEM_ALIASES = {
    "http://loinc.org": "LOINC",
    "urn:oid:2.16.840.1.113883.6.1": "LOINC",
    "ln": "LOINC",
    "loinc": "LOINC",
    "http://www.whocc.no/atc": "ATC",
    "http://www.who.int/atc": "ATC",
    "urn:oid:2.16.840.1.113883.6.73": "ATC",
    "atc": "ATC",
    "whoatc": "ATC",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RXNORM",
    "urn:oid:2.16.840.1.113883.6.88": "RXNORM",
    "rxnorm": "RXNORM",
    "rxn": "RXNORM",
    "http://snomed.info/sct": "SNOMED",
    "sct": "SNOMED",
    "snomed": "SNOMED",
    "http://hl7.org/fhir/sid/icd-10": "ICD10",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD10",
    "urn:oid:2.16.840.1.113883.6.3": "ICD10",
    "i10": "ICD10",
    "icd10": "ICD10",
    "cim10": "ICD10",
    "cim-10": "ICD10",
    "http://data.esante.gouv.fr/ansm/medicament/codeCIS": "CIS",
    "urn:oid:1.2.250.1.213.2.3.1": "CIS",
    "cis": "CIS",
    "http://data.esante.gouv.fr/ansm/medicament/codeCIP13": "CIP13",
    "urn:oid:1.2.250.1.213.2.3.2": "CIP13",
    "cip13": "CIP13",
    "cip": "CIP13",
    "http://data.esante.gouv.fr/ansm/medicament/UCD": "UCD",
    "urn:oid:1.2.250.1.213.2.3.3": "UCD",
    "ucd": "UCD",
    "ndc": "NDC",
    "http://hl7.org/fhir/sid/ndc": "NDC",
    "cip7": "CIP7",
    "http://standardterms.edqm.eu": "EDQM",
    "urn:oid:0.4.0.127.0.16.1.1.2.1": "EDQM",
    "edqm": "EDQM",
    "http://terminology.hl7.org/CodeSystem/v2-0162": "HL70162",
    "hl70162": "HL70162",
    "https://smt.esante.gouv.fr/terminologie-cim-10/": "ICD10",
    "http://hl7.org/fhir/sid/cvx": "CVX",
    "http://terminology.hl7.org/CodeSystem/v2-0078": "HL70078",
    "http://hl7.org/fhir/v2/0078": "HL70078",
    "urn:oid:2.16.840.1.113883.12.78": "HL70078",
    "hl70078": "HL70078",
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation": "V3INTERPRETATION",
    "http://hl7.org/fhir/v3/ObservationInterpretation": "V3INTERPRETATION",
    "urn:oid:2.16.840.1.113883.5.83": "V3INTERPRETATION",
}

ATC_SYSTEMS = frozenset({"ATC"})
QualitativeResult = Literal["positive", "negative"]
_QUALITATIVE_RESULTS: frozenset[str] = frozenset({"positive", "negative"})
_SITE_DRUG_TABLE = "drugs_site.csv"
_NAMES_MEMO_SIZE = 100_000
_NAME_TABLES = "drugs_names"  # drugs_names*.csv: name tables (names.py), not code tables
_SEMANTIC_TAG = re.compile(r"\s*\((?:qualifier value|finding)\)\s*$")
_ICD10_CODE = re.compile(r"([A-Z][0-9]{2})([0-9A-Z]{0,4})")


def normalise_system(system: str | None) -> str:
    """The short name of a code system (``LOINC``, ``ATC``, ``RXNORM``...), or ``LOCAL``."""
    if not system:
        return "LOCAL"
    key = system.strip()
    return _SYSTEM_ALIASES.get(key, _SYSTEM_ALIASES.get(key.lower(), key.upper()))


def normalise_icd10(code: str | None) -> str | None:
    """``K92.0``, ``k920``, ``K92.0*`` → ``K92.0``; ``None`` when it is not shaped like ICD-10."""
    if not code:
        return None
    # Dagger/asterisk marks (CIM-10 dual coding) and spacing are presentation, not code.
    text = re.sub(r"[\s.†*]", "", code.upper())
    match = _ICD10_CODE.fullmatch(text)
    if match is None:
        return None
    category, detail = match.groups()
    return f"{category}.{detail}" if detail else category


def ucd13(code: str) -> str:
    """A UCD code in its 13-digit form: a UCD7 becomes ``34008`` + UCD7 + EAN-13 check digit."""
    digits = code.strip()
    if len(digits) != 7 or not digits.isdigit():
        return digits
    body = f"34008{digits}"
    weighted = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body))
    return body + str(-weighted % 10)


def _substance_key(name: str) -> str:
    """Substance names compared without case, accents or extra spaces (BDPM vs ANSM spelling)."""
    return " ".join(_without_accents(name).upper().split())


def _without_accents(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text)
    return "".join(c for c in plain if not unicodedata.combining(c))


def _word_key(text: str) -> str:
    """A written result compared without case, accents, surrounding spaces or dots, nor the
    semantic tag of a SNOMED CT fully specified name (``Negative (qualifier value)``)."""
    plain = _SEMANTIC_TAG.sub("", _without_accents(text).lower())
    return " ".join(plain.strip(" .").split())


class UnknownUnit(VigieError, ValueError):
    """A unit the tables cannot convert to the concept's canonical unit."""

    def __init__(self, concept: str, unit: str | None, canonical: str) -> None:
        self.concept, self.unit, self.canonical = concept, unit, canonical
        super().__init__(f"unit {unit!r} cannot be converted to {canonical} for {concept}")


@dataclass(frozen=True)
class Concept:
    """A lab or observation concept and its canonical unit."""

    name: str
    kind: str  # "lab" or "observation"
    unit: str
    label: str


@dataclass(frozen=True)
class _CodeEntry:
    concept: str
    implied_unit: str | None


class Terminology:
    """Loaded mapping tables. Use ``default_terminology()`` for the shipped tables.

    ``site_dir`` points at a site's own tables (``site_drugs.csv``, ``site_lab_codes.csv``)
    that are read after, and win over, the shipped ones. In ``site_drugs.csv`` (columns
    ``system,code,atc``) an empty ATC marks a local code as known but unmapped.
    """

    def __init__(self, data_dir: Path = DATA_DIR, site_dir: Path | None = None) -> None:
        self.concepts = {
            r["concept"]: Concept(r["concept"], r["kind"], r["unit"], r["label"])
            for r in read_rows("labs.csv", data_dir)
        }
        self._codes: dict[tuple[str, str], _CodeEntry] = {}
        self._load_codes(read_rows("lab_codes.csv", data_dir))
        self._aliases = read_unit_aliases(data_dir)
        self._conversions: dict[tuple[str, str, str], float] = {}
        for row in read_unit_conversions(data_dir):  # feeds use every row, "use=feeds" ones too
            key = (row.concept, self.canonical_unit(row.from_unit), row.to_unit)
            self._conversions[key] = row.factor
        self._routes = {
            (normalise_system(r["system"]), r["code"].strip().lower()): r["route"]
            for r in read_rows("routes.csv", data_dir)
        }
        self._drugs: dict[tuple[str, str], str] = {}  # "" = known code without ATC
        for name in _drug_tables(data_dir):
            self._load_drugs(read_rows(name, data_dir))
        self._allergens: dict[tuple[str, str], tuple[str, ...]] = {
            (normalise_system(r["system"]), r["code"].strip()): tuple(r["atc"].split())
            for r in _optional_rows("allergy_atc.csv", data_dir)
        }
        self._snomed_icd10 = {
            r["snomed"].strip(): icd
            for r in _optional_rows("conditions_snomed_icd10.csv", data_dir)
            if (icd := normalise_icd10(r["icd10"]))
        }
        self._qualitative = _qualitative_table(_optional_rows("qualitative_results.csv", data_dir))
        self._data_dir = data_dir
        self._substances: dict[str, tuple[frozenset[str], frozenset[str]]] | None = None
        self._drug_names: DrugNames | None = None
        # Labels repeat (a hospital prescribes a few hundred products): each is read once.
        self._names_memo: dict[str | None, NameMatch | None] = {}
        self._compositions: CompositionTable | None = None
        self._site_dir = site_dir
        if site_dir is not None:
            self._load_site(site_dir)

    def _load_codes(self, rows: Iterable[dict[str, str]]) -> None:
        for r in rows:
            key = (normalise_system(r["system"]), r["code"].strip())
            self._codes[key] = _CodeEntry(r["concept"], r.get("implied_unit") or None)

    def _load_drugs(self, rows: Iterable[dict[str, str]]) -> None:
        for r in rows:
            key = _drug_key(normalise_system(r["system"]), r["code"])
            self._drugs[key] = (r.get("atc") or "").strip().upper()

    def _load_site(self, site_dir: Path) -> None:
        if (site_dir / "site_lab_codes.csv").exists():
            self._load_codes(read_rows("site_lab_codes.csv", site_dir))
        if (site_dir / "site_drugs.csv").exists():
            self._load_drugs(read_rows("site_drugs.csv", site_dir))

    # Labs and observations -------------------------------------------------------------

    def lab_concept(self, system: str | None, code: str) -> Concept | None:
        """The concept a lab/observation code stands for, or ``None`` when unmapped."""
        entry = self._codes.get((normalise_system(system), code.strip()))
        return self.concepts[entry.concept] if entry else None

    def implied_unit(self, system: str | None, code: str) -> str | None:
        entry = self._codes.get((normalise_system(system), code.strip()))
        return entry.implied_unit if entry else None

    def canonical_unit(self, unit: str | None) -> str:
        """One spelling per unit (``mmol/l`` → ``mmol/L``); unknown spellings pass through."""
        if unit is None:
            return ""
        text = unit.strip()
        return self._aliases.get(text, self._aliases.get(text.lower(), text))

    def to_canonical(self, concept: str, value: float, unit: str | None) -> tuple[float, str]:
        """Convert a value to the concept's canonical unit, or raise ``UnknownUnit``."""
        target = self.concepts[concept].unit
        source = self.canonical_unit(unit)
        if source == target:
            return value, target
        factor = self._conversions.get((concept, source, target))
        if factor is None:
            factor = self._conversions.get(("*", source, target))
        if factor is None:
            raise UnknownUnit(concept, unit, target)
        return round(value * factor, 6), target

    def qualitative(self, system: str | None, code: str) -> QualitativeResult | None:
        """The qualitative value of a coded answer or interpretation code, ``None`` if unlisted."""
        return self._qualitative.get((normalise_system(system), code.strip()))

    def qualitative_word(self, text: str) -> QualitativeResult | None:
        """The qualitative value of a written result (``Positif``, ``not detected``)."""
        return self._qualitative.get(("TEXT", _word_key(text)))

    # Drugs, routes, diagnoses ------------------------------------------------------------

    def drug_atc(self, system: str | None, code: str) -> str | None:
        """ATC code of a drug code: ATC itself, CIS, CIP13/CIP7, RxNorm, UCD/local via tables.

        ``None`` for an unknown code and for a known code without ATC (see ``drug_known``).
        """
        short = normalise_system(system)
        if short in ATC_SYSTEMS:
            return code.strip().upper() or None
        return self._drugs.get(_drug_key(short, code)) or None

    def drug_by_name(self, label: str | None) -> NameMatch | None:
        """The ATC a drug label gives by its substance names (``names.DrugNames.match``), for a
        drug whose code no table maps; ``None`` when the label names no known substance."""
        memo = self._names_memo
        if label in memo:
            return memo[label]
        if self._drug_names is None:
            self._drug_names = DrugNames(self._data_dir)
        if len(memo) >= _NAMES_MEMO_SIZE:  # a bound for a long-lived process reading free text
            memo.clear()
        found = memo[label] = self._drug_names.match(label)
        return found

    def drug_ingredients(self, system: str | None, code: str) -> tuple[Component, ...]:
        """The substances and strengths of a combination product's code (CIS, CIP13/CIP7, UCD
        or a site code); ``()`` for a single-substance product or an unknown code."""
        if self._compositions is None:
            table = CompositionTable(_optional_rows("compositions_bdpm.csv", self._data_dir))
            table.add(_optional_rows("compositions_site.csv", self._data_dir), "site")
            if self._site_dir is not None:
                table.add(_optional_rows("site_compositions.csv", self._site_dir), "site")
            self._compositions = table
        system_key, code_key = _drug_key(normalise_system(system), code)
        return self._compositions.ingredients(system_key, code_key)

    def drug_known(self, system: str | None, code: str) -> bool:
        """Whether a drug code is in the tables, with or without an ATC."""
        short = normalise_system(system)
        return short in ATC_SYSTEMS or _drug_key(short, code) in self._drugs

    def substance_atc(self, name: str, *, single_only: bool = False) -> frozenset[str]:
        """ATC codes of the BDPM products containing a substance (any spelling of case/accents).

        ``single_only`` keeps the products where it is the only active substance. Empty when the
        name is not a BDPM substance or its products carry no ATC.
        """
        if self._substances is None:
            self._substances = _load_substances(self._data_dir)
        every, alone = self._substances.get(_substance_key(name), (frozenset(), frozenset()))
        return alone if single_only else every

    def allergy_atc(self, system: str | None, code: str) -> tuple[str, ...]:
        """ATC codes or class prefixes an allergen code rules out; ``()`` when none or unknown.

        Falls back to ``drug_atc`` for a drug code that is not in the allergen table.
        """
        key = (normalise_system(system), code.strip())
        if key in self._allergens:
            return self._allergens[key]
        atc = self.drug_atc(system, code)
        return (atc,) if atc else ()

    def allergy_is_drug(self, system: str | None, code: str) -> bool | None:
        """``True`` for a drug allergen, ``False`` for a known non-drug one, ``None`` if unknown."""
        key = (normalise_system(system), code.strip())
        if key in self._allergens:
            return bool(self._allergens[key])
        if self.drug_atc(system, code):
            return True
        return False if self.drug_known(system, code) else None

    def icd10(self, system: str | None, code: str) -> str | None:
        """ICD-10 code of a diagnosis: ICD-10 normalised (``K920`` → ``K92.0``), SNOMED via the
        table; ``None`` when unmapped."""
        short = normalise_system(system)
        if short == "ICD10":
            return normalise_icd10(code)
        if short == "SNOMED":
            return self._snomed_icd10.get(code.strip())
        return None

    def route(self, system: str | None, code_or_text: str | None) -> str | None:
        """Canonical route for a route code or label, or ``None`` when unknown."""
        if not code_or_text:
            return None
        key = code_or_text.strip().lower()
        return self._routes.get((normalise_system(system), key)) or self._routes.get(("TEXT", key))


def _optional_rows(name: str, directory: Path) -> Iterator[dict[str, str]]:
    """Rows of a table that a test or site data directory may leave out."""
    if (directory / name).exists() or (directory / f"{name}.gz").exists():
        yield from read_rows(name, directory)


def _qualitative_table(
    rows: Iterable[dict[str, str]],
) -> dict[tuple[str, str], QualitativeResult]:
    """``(system, code)`` → result; ``TEXT`` rows keyed by their word in comparison form."""
    table: dict[tuple[str, str], QualitativeResult] = {}
    for r in rows:
        result = r["result"].strip()
        if result not in _QUALITATIVE_RESULTS:
            raise ValueError(
                f"qualitative_results.csv: {r['code']!r}: result {result!r} is not "
                "positive or negative"
            )
        system = normalise_system(r["system"])
        code = _word_key(r["code"]) if system == "TEXT" else r["code"].strip()
        table[system, code] = "positive" if result == "positive" else "negative"
    return table


def _drug_tables(directory: Path) -> list[str]:
    """The ``drugs_*.csv[.gz]`` tables, the site formulary last so that it wins."""
    names = {
        path.name.removesuffix(".gz")
        for path in directory.glob("drugs_*.csv*")
        if path.name.endswith((".csv", ".csv.gz")) and not path.name.startswith(_NAME_TABLES)
    }
    return sorted(names, key=lambda name: (name == _SITE_DRUG_TABLE, name))


def _drug_key(short: str, code: str) -> tuple[str, str]:
    """Table key of a drug code: UCD7 → UCD13; a 7-digit code sent as CIP is a CIP7."""
    text = code.strip()
    if short == "UCD":
        return short, ucd13(text)
    if short == "CIP13" and len(text) == 7:
        return "CIP7", text
    return short, text


def _load_substances(directory: Path) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """Substance key → (ATC of every product, ATC of single-substance products)."""
    every: dict[str, set[str]] = defaultdict(set)
    alone: dict[str, set[str]] = defaultdict(set)
    for r in _optional_rows("substances_bdpm.csv", directory):
        key = _substance_key(r["substance_name"])
        every[key].update(r["atc"].split())
        alone[key].update(r["atc_single"].split())
    return {key: (frozenset(every[key]), frozenset(alone[key])) for key in every}


@cache
def default_terminology() -> Terminology:
    """The shipped tables, plus the site tables in ``$VIGIE_SITE_TABLES`` if set."""
    site: Path | None = settings.value("site_tables")
    return Terminology(site_dir=site)
