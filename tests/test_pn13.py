"""PN13 connector: the five Interop'Santé messages against their FHIR translations, bad input, fuzz.

The FHIR side is read straight from the translation Bundles
(``shared_data/fr-medication-ig/fhir_bundles/Bundle-TradPN13FHIR-*.json``: the MedicationRequest's
medication, ``dosageInstruction`` doseAndRate, ``timing.repeat`` and route), so that this test
does not depend on the FHIR connector; ``test_agrees_with_the_fhir_connector`` also compares
with ``vigie.connectors.fhir.connector`` facts for the single-drug bundles.

Golden files: ``tests/golden/pn13/<sample>.json``; regenerate after a deliberate change with
``VIGIE_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/test_pn13.py -k golden`` and review the diff.
``tests/golden/pn13/PN13-prescription-DC__02__Morphine_PCA.xml`` is a sixth message (morphine
PCA, from the same IG's pages, stored in ISO-8859-1) whose FHIR translation is also shared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vigie import settings as vigie_settings
from vigie.connectors import pn13
from vigie.connectors.base import FeedError, ParseOutcome, RawMessage
from vigie.facts import Fact, FlagCode, MedicationOrder, Observation, Patient, Sex, Stay

GOLDEN = Path(__file__).parent / "golden" / "pn13"
PCA = GOLDEN / "PN13-prescription-DC__02__Morphine_PCA.xml"
PARACETAMOL_DC = "PN13-prescription-DC__01__Parac_tamol_en_cas_de_douleur.xml"
COMPOUND = "PN13-prescription-compound__01__Perfusion_6_composants_sur_12h_par_jour.xml"
PARACETAMOL = (
    "PN13-prescription-specialite__01__PARACETAMOL_MYLAN_CONSEIL_1000_MG_en_cas_de_douleur.xml"
)
DOLIPRANE = "PN13-prescription-specialite__02__DOLIPRANE_1000_MG_3x_jour.xml"
METFORMIN = "PN13-prescription-specialite__03__METFORMINE_alternativement_GLICLAZIDE.xml"
SAMPLES = (PARACETAMOL_DC, COMPOUND, PARACETAMOL, DOLIPRANE, METFORMIN)
# PN13 message → its FHIR translation. DOLIPRANE has two: the plain one keeps the site's
# frequency code, the "Interpret" one says what it means (3 a day) — we compare with the latter.
TRANSLATIONS = {
    PARACETAMOL_DC: "Bundle-TradPN13FHIR-Presc-Paracetamol-SiDouleur.json",
    COMPOUND: "Bundle-TradPN13FHIR-Presc-perfusion-6-composants.json",
    PARACETAMOL: "Bundle-TradPN13FHIR-Presc-Paracetamol.json",
    DOLIPRANE: "Bundle-TradPN13FHIR-Presc-DOLIPRANE-Interpret.json",
    METFORMIN: "Bundle-TradPN13FHIR-MultiLine-Presc-Alt-METFORMINE-GLICLAZIDE.json",
    PCA.name: "Bundle-TradPN13FHIR-Presc-Morphine-PCA.json",
}
# EDQM routes met in the translations (the IG's CIO → EDQM ConceptMap: 54 → 20053000, 49 → 20045000)
EDQM_ROUTES = {"20053000": "oral", "20045000": "iv"}
PERIOD_DAYS = {"s": 1 / 86400, "min": 1 / 1440, "h": 1 / 24, "d": 1, "wk": 7}


def xml_path(shared_data: Path, name: str) -> Path:
    return PCA if name == PCA.name else shared_data / "fr-medication-ig" / "pn13_xml" / name


def load(path: Path, name: str | None = None) -> ParseOutcome:
    [raw] = pn13.split(name or path.name, path.read_bytes())  # a document is one message
    return pn13.parse(raw)


def load_bytes(content: bytes, name: str = "bad.xml") -> ParseOutcome:
    [raw] = pn13.split(name, content)
    return pn13.parse(raw)


def orders(outcome: ParseOutcome) -> list[MedicationOrder]:
    return [fact for fact in outcome.facts if isinstance(fact, MedicationOrder)]


def the(kind: type[Fact], outcome: ParseOutcome) -> Any:
    [fact] = [fact for fact in outcome.facts if isinstance(fact, kind)]
    return fact


# The FHIR translations, read directly -------------------------------------------------------


@dataclass(frozen=True)
class FhirLine:
    """What a translated MedicationRequest says about drug, dose, frequency and route."""

    codes: tuple[str, ...]
    doses: tuple[float, ...]
    per_day: float | None
    as_needed: bool
    routes: frozenset[str]
    max_per_day: float | None
    labels: frozenset[str]


def fhir_lines(shared_data: Path, bundle_name: str) -> list[FhirLine]:
    bundle = json.loads(
        (shared_data / "fr-medication-ig" / "fhir_bundles" / bundle_name).read_text()
    )
    resources = {entry["resource"]["id"]: entry["resource"] for entry in bundle["entry"]}
    return [
        fhir_line(request, resources)
        for request in resources.values()
        if request["resourceType"] == "MedicationRequest"
    ]


def fhir_line(request: dict[str, Any], resources: dict[str, dict[str, Any]]) -> FhirLine:
    dosages = request["dosageInstruction"]
    per_days = [dosage_per_day(d) for d in dosages]
    maxima = [
        d["maxDosePerPeriod"]["numerator"]["value"] for d in dosages if "maxDosePerPeriod" in d
    ]
    return FhirLine(
        codes=medication_codes(request, resources),
        doses=tuple(dose_value(d) for d in dosages),
        per_day=None if None in per_days else sum(p for p in per_days if p is not None),
        as_needed=all(d.get("asNeededBoolean") or "asNeededCodeableConcept" in d for d in dosages),
        routes=frozenset(EDQM_ROUTES[c["code"]] for d in dosages for c in d["route"]["coding"]),
        max_per_day=maxima[0] if maxima else None,
        labels=medication_labels(request, resources),
    )


def medication_codes(
    request: dict[str, Any], resources: dict[str, dict[str, Any]]
) -> tuple[str, ...]:
    if "medicationCodeableConcept" in request:
        return tuple(c["code"] for c in request["medicationCodeableConcept"]["coding"])
    medication = resources.get(request["medicationReference"]["reference"].lstrip("#"))
    if medication is None:  # the compound bundle's reference is broken: take its only compound
        [medication] = [
            r for r in resources.values() if r["resourceType"] == "Medication" and "ingredient" in r
        ]
    if "ingredient" in medication:
        parts = [
            resources[i["itemReference"]["reference"].lstrip("#")] for i in medication["ingredient"]
        ]
        return tuple(c["code"] for part in parts for c in part["code"]["coding"])
    return tuple(c["code"] for c in medication["code"]["coding"])


def medication_labels(
    request: dict[str, Any], resources: dict[str, dict[str, Any]]
) -> frozenset[str]:
    reference = request.get("medicationReference", {}).get("reference", "").lstrip("#")
    medication = resources.get(reference, {})
    return frozenset(label.upper() for label in [medication.get("code", {}).get("text")] if label)


def dose_value(dosage: dict[str, Any]) -> float:
    dose = dosage["doseAndRate"][0]
    if "doseQuantity" in dose:
        return float(dose["doseQuantity"]["value"])
    return float(dose["rateRatio"]["numerator"]["value"])


def dosage_per_day(dosage: dict[str, Any]) -> float | None:
    """Administrations a day; a rate counts hourly; no frequency at all is once a day (PN13)."""
    dose = dosage["doseAndRate"][0]
    if "rateRatio" in dose:
        return 1 / (
            dose["rateRatio"]["denominator"]["value"]
            * PERIOD_DAYS[dose["rateRatio"]["denominator"]["code"]]
        )
    repeat = dosage["timing"].get("repeat", {})
    times = repeat.get("frequency", repeat.get("frequencyMax"))
    if times is None and "period" not in repeat:
        return None if "code" in dosage["timing"] else 1.0
    return times / (repeat.get("period", 1) * PERIOD_DAYS[repeat.get("periodUnit", "d")])


def code_forms(order: MedicationOrder) -> set[str]:
    code = order.drug.code
    return {code, pn13.ucd13(code)} if order.drug.system == "UCD" and len(code) == 7 else {code}


# The samples against their translations ---------------------------------------------------


@pytest.mark.parametrize("name", [*SAMPLES, PCA.name])
def test_orders_match_their_fhir_translation(shared_data: Path, name: str) -> None:
    lines: dict[str, list[MedicationOrder]] = {}
    for order in orders(load(xml_path(shared_data, name))):
        lines.setdefault(order.order_id, []).append(order)
    theirs = fhir_lines(shared_data, TRANSLATIONS[name])
    assert len(lines) == len(theirs)
    for fhir in theirs:
        [ours] = [line for line in lines.values() if set(fhir.codes) <= line_codes(line)] or [
            # a drug prescribed by a local DC code (PARACETAMOL 1181): the translators
            # re-coded it to its SMS substance code, so only the label can be compared
            line
            for line in lines.values()
            if {o.label.upper() for o in line if o.label} <= fhir.labels
        ]
        assert len(ours) == len(fhir.codes)
        assert {o.route for o in ours} == fhir.routes
        assert {o.frequency_per_day for o in ours} == {fhir.per_day}
        assert {o.as_needed for o in ours} == {fhir.as_needed}
        if len(ours) == 1 and len(fhir.doses) == 1:
            # as sent: a count of tablets may have become its substance's amount (strength)
            by_strength = any(f.code is FlagCode.DOSE_FROM_STRENGTH for f in ours[0].flags)
            sent = float(ours[0].original_dose or "nan") if by_strength else ours[0].dose
            assert sent == fhir.doses[0]


def line_codes(line: list[MedicationOrder]) -> set[str]:
    return set().union(*(code_forms(order) for order in line))


@pytest.mark.parametrize("name", SAMPLES)
def test_every_sample_loads(shared_data: Path, name: str) -> None:
    outcome = load(xml_path(shared_data, name))
    assert orders(outcome)
    assert the(Patient, outcome).patient_id
    assert the(Stay, outcome).stay_id
    assert all(order.status == "active" for order in orders(outcome))
    # only the METFORMINE file has a problem: it declares ISO-8859-1 but is written in UTF-8
    expected_errors = 1 if name == METFORMIN else 0
    assert len(outcome.errors) == expected_errors


def test_doliprane_three_times_a_day(shared_data: Path) -> None:
    outcome = load(xml_path(shared_data, DOLIPRANE))
    [order] = orders(outcome)
    assert (order.order_id, order.drug.system, order.drug.code) == ("id1", "UCD", "9216902")
    assert pn13.ucd13(order.drug.code) == "3400892169026"
    assert order.atc == "N02BE01"
    # DOLIPRANE 1 000 mg (French thousands space), 1 cpr three times a day: 1000 mg, 3 g a day
    assert (order.dose, order.dose_unit, order.original_dose_unit) == (1000, "mg", "cpr")
    assert (order.original_dose, order.frequency_per_day, order.daily_dose) == ("1", 3, 3000)
    assert order.frequency_text == "1 cpr Trois fois par jour"
    assert (order.route, order.original_route) == ("oral", "54")
    assert (order.start, order.end) == (datetime(2007, 12, 28, 7), datetime(2007, 12, 30, 18))
    assert order.prescriber == "345678"
    assert the(Stay, outcome).ward == "3456"


def test_paracetamol_if_needed_keeps_its_maximum(shared_data: Path) -> None:
    outcome = load(xml_path(shared_data, PARACETAMOL))
    [order] = orders(outcome)
    assert order.as_needed
    assert (order.dose, order.dose_unit) == (1000, "mg")
    assert order.frequency_per_day == 4  # at least 6 h apart
    # 4000 mg/day as the message says; the DC bundle's maxDosePerPeriod of 4 mg is a typo
    assert order.daily_dose == 4000
    [fhir] = fhir_lines(shared_data, TRANSLATIONS[PARACETAMOL])
    assert fhir.max_per_day == order.daily_dose
    assert order.prescriber == "P082443"
    patient = the(Patient, outcome)
    assert (patient.patient_id, patient.birth_date, patient.sex) == (
        "5000001820",
        date(1961, 11, 25),
        Sex.UNKNOWN,
    )


def test_weight_and_height_are_observations(shared_data: Path) -> None:
    outcome = load(xml_path(shared_data, PARACETAMOL_DC))
    measures = {fact.concept: fact for fact in outcome.facts if isinstance(fact, Observation)}
    assert (measures["weight"].value, measures["weight"].unit) == (120, "kg")
    assert measures["weight"].time == datetime(2018, 6, 21, 16, 5, 10)
    assert (measures["height"].value, measures["height"].unit) == (189, "cm")
    [order] = orders(outcome)
    assert (order.drug.system, order.drug.code, order.drug.display) == (
        "PN13-COMPOSANT-3",
        "1181",
        "PARACETAMOL",
    )
    # a hospital's own component code: the ATC comes from the label, paracetamol N02BE01 (WHO)
    assert order.atc == "N02BE01"
    assert FlagCode.ATC_FROM_NAME in {flag.code for flag in order.flags}


def test_compound_infusion_gives_one_order_per_component(shared_data: Path) -> None:
    outcome = load(xml_path(shared_data, COMPOUND))
    components = orders(outcome)
    expected = [f"pn13:order:123456789123:6166:{i}" for i in range(1, 7)]  # the patient's line
    assert [o.fact_id for o in components] == expected
    assert {o.order_id for o in components} == {"6166"}
    potassium = components[1]
    assert potassium.drug.display.startswith("POTASSIUM CHLORURE 1 g")
    # 1 "dose" of the preparation holds 2 ampoules of KCl, given every 12 hours
    assert (potassium.dose, potassium.dose_unit, potassium.frequency_per_day) == (2, "ampoule", 2)
    assert potassium.daily_dose == 4
    assert all(o.route == "iv" and o.start == datetime(2023, 5, 3, 10) for o in components)
    assert the(Patient, outcome).sex is Sex.MALE
    unmapped = [o for o in outcome.facts if isinstance(o, Observation) and o.concept is None]
    assert [(o.code.code, o.original_unit) for o in unmapped] == [("5", "µmol/l")]
    # no Dh_rens_compl: the measurement takes the prescription time (16-digit date-time)
    assert unmapped[0].time == datetime(2023, 5, 3, 11, 30)


def test_alternative_lines_say_so(shared_data: Path) -> None:
    metformin, gliclazide = orders(load(xml_path(shared_data, METFORMIN)))
    # METFORMINE ACC 1000MG CPR, 0,5 cpr twice a day: 500 mg, 1000 mg a day by the strength
    assert (metformin.dose, metformin.dose_unit) == (500, "mg")
    assert (metformin.original_dose, metformin.original_dose_unit) == ("0.5", "cpr")
    assert (metformin.frequency_per_day, metformin.daily_dose) == (2, 1000)
    # GLICLAZIDE ARW 30MG CPR LM, 3 cpr: 90 mg
    assert (gliclazide.dose, gliclazide.dose_unit) == (90, "mg")
    assert gliclazide.frequency_per_day == 1  # no frequency: once a day
    assert gliclazide.frequency_text is not None
    assert "alternative to line 20250502144844569" in gliclazide.frequency_text
    assert "intolérance digestive" in gliclazide.frequency_text
    assert (metformin.atc, gliclazide.atc) == ("A10BA02", "A10BB09")


def test_declared_encoding_mismatch_is_read_and_reported(shared_data: Path) -> None:
    outcome = load(xml_path(shared_data, METFORMIN))
    [warning] = outcome.errors
    assert "declared encoding iso-8859-1" in warning.expected
    assert the(Patient, outcome).sex is Sex.FEMALE


def test_real_latin1_document_and_continuous_rate() -> None:
    [order] = orders(load(PCA))
    assert (order.drug.system, order.drug.code) == ("SMS", "100000091372")
    # 5 mg/h continuously + 10 mg bolus at most every 2 h
    assert (order.frequency_per_day, order.daily_dose, order.dose_unit) == (36, 240, "mg")
    assert order.dose is None
    assert FlagCode.MISSING_DOSE not in {flag.code for flag in order.flags}


def split_one(path: Path, name: str | None = None) -> RawMessage:
    [raw] = pn13.split(name or path.name, path.read_bytes())
    return raw


def test_message_id_is_the_patient_and_the_prescription(shared_data: Path) -> None:
    """``<Ipp>`` and ``<Messages Phast-id_message=...>`` as written in the reference files."""
    expected = {
        PARACETAMOL: "5000001820|10723",
        PARACETAMOL_DC: "5000001820|10723",
        METFORMIN: "6032486|10543744",
        PCA.name: "6032486|10543745",
    }
    for name, message_id in expected.items():
        assert split_one(xml_path(shared_data, name)).message_id == message_id
        assert split_one(xml_path(shared_data, name), "renamed.xml").message_id == message_id


def test_the_two_10723_examples_are_one_prescription(shared_data: Path) -> None:
    """Same patient, stay, prescription time, emission time and line; only the drug's coding
    differs (substance code 1181 in DC, UCD13 3400890006262 in the other): two versions of one
    message, which is what their FHIR translations say (groupIdentifier 10723, line 31626)."""
    dc, product = (load(xml_path(shared_data, n)) for n in (PARACETAMOL_DC, PARACETAMOL))
    assert [o.fact_id for o in orders(dc)] == [o.fact_id for o in orders(product)]
    assert (orders(dc)[0].drug.code, orders(product)[0].drug.code) == ("1181", "3400890006262")
    assert dc.version_time == product.version_time == datetime(2022, 4, 11, 16, 42, 53)
    bundles = shared_data / "fr-medication-ig" / "fhir_bundles"
    for name in TRANSLATIONS.values():
        if "Paracetamol" in name:
            bundle = json.loads((bundles / name).read_text())
            [request] = [
                e["resource"]
                for e in bundle["entry"]
                if e["resource"]["resourceType"] == "MedicationRequest"
            ]
            assert request["groupIdentifier"]["value"] == "10723"
            assert request["identifier"][0]["value"] == "31626"


def test_without_phast_id_message_the_id_is_a_content_hash(shared_data: Path) -> None:
    content = xml_path(shared_data, DOLIPRANE).read_bytes()
    assert b"Phast-id_message" not in content
    [raw] = pn13.split("a.xml", content)
    [changed] = pn13.split("a.xml", content.replace(b"<Nombre>1</Nombre>", b"<Nombre>2</Nombre>"))
    assert raw.message_id != changed.message_id
    assert raw.message_id == next(pn13.split("b.xml", content)).message_id


def test_version_time_is_the_emission_time(shared_data: Path) -> None:
    """``Phast-dh_émission`` (tests read times as UTC: see conftest), on every fact too."""
    expected = {
        PARACETAMOL_DC: datetime(2022, 4, 11, 16, 42, 53),  # Phast-dh_émission="20220411164253"
        METFORMIN: datetime(2025, 5, 2, 14, 55, 43),  # Phast-dh_émission="20250502145543"
        PCA.name: datetime(2025, 5, 7, 15, 38, 1),  # Phast-dh_émission="20250507153801"
        # no Phast-dh_émission: the latest <Dh_prescription>
        DOLIPRANE: datetime(2007, 12, 27, 10, 33),  # 20071227103300
        COMPOUND: datetime(2023, 5, 3, 11, 30),  # 2023050311300000 (with hundredths)
    }
    for name, when in expected.items():
        outcome = load(xml_path(shared_data, name))
        assert outcome.version_time == when, name
        assert {fact.source.version_time for fact in outcome.facts} == {when}, name


def test_version_time_is_read_in_the_site_zone(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIGIE_TIMEZONE", "Europe/Paris")  # April 2022: UTC+2
    vigie_settings.site_timezone.cache_clear()
    try:
        outcome = load(xml_path(shared_data, PARACETAMOL_DC))
    finally:
        monkeypatch.undo()
        vigie_settings.site_timezone.cache_clear()
    assert outcome.version_time == datetime(2022, 4, 11, 14, 42, 53)


def test_a_bad_emission_time_is_reported_and_falls_back(shared_data: Path) -> None:
    content = xml_path(shared_data, PARACETAMOL_DC).read_bytes()
    outcome = load_bytes(content.replace(b'"20220411164253"', b'"2022-04-11"', 1))
    assert outcome.version_time == datetime(2022, 4, 11, 16, 42, 53)  # <Dh_prescription>
    [error] = outcome.errors
    assert error.position == "line 2, /Messages" and error.found == "2022-04-11"


def test_a_correction_is_a_new_version_of_the_same_message(shared_data: Path) -> None:
    """The prescriber changes the dose: the sender sends the prescription again, later."""
    original = xml_path(shared_data, PARACETAMOL_DC).read_bytes()
    corrected = correction_of(original)
    [first], [second] = pn13.split("in.xml", original), pn13.split("in.xml", corrected)
    assert first.message_id == second.message_id == "5000001820|10723"
    assert first.sha256 != second.sha256
    before, after = pn13.parse(first), pn13.parse(second)
    assert (before.version_time, after.version_time) == (
        datetime(2022, 4, 11, 16, 42, 53),
        datetime(2022, 4, 11, 17, 5),
    )
    assert [o.fact_id for o in orders(before)] == [o.fact_id for o in orders(after)]
    assert [o.dose for o in orders(before)] == [1000]
    assert [o.dose for o in orders(after)] == [500]


def correction_of(original: bytes) -> bytes:
    """The DC paracetamol message, sent again at 17:05 with 500 mg a dose (was 1000 mg)."""
    corrected = original.replace(b'Phast-dh_\xc3\xa9mission="20220411164253"', CORRECTED_AT)
    corrected = corrected.replace(b"<Cr\xc3\xa9_arr_mod_val>C<", b"<Cr\xc3\xa9_arr_mod_val>M<")
    # the component's quantity and the posology's, both 1000.0 mg
    corrected = corrected.replace(b"<Nombre>1000.0</Nombre>", b"<Nombre>500.0</Nombre>")
    assert corrected.count(b"<Nombre>500.0</Nombre>") == 2 and CORRECTED_AT in corrected
    return corrected


CORRECTED_AT = 'Phast-dh_émission="20220411170500"'.encode()


def test_fact_ids_do_not_depend_on_the_file_name(shared_data: Path) -> None:
    ids = [f.fact_id for f in load(xml_path(shared_data, COMPOUND)).facts]
    assert ids == [f.fact_id for f in load(xml_path(shared_data, COMPOUND), "renamed.xml").facts]


def test_agrees_with_the_fhir_connector(shared_data: Path) -> None:
    from vigie.connectors.fhir import connector as fhir

    for name in (DOLIPRANE, PARACETAMOL, METFORMIN):
        bundle = shared_data / "fr-medication-ig" / "fhir_bundles" / TRANSLATIONS[name]
        theirs = [
            f for raw in fhir.split(bundle.name, bundle.read_bytes()) for f in fhir.parse(raw).facts
        ]
        by_code = {f.drug.code: f for f in theirs if isinstance(f, MedicationOrder)}
        for order in orders(load(xml_path(shared_data, name))):
            [code] = code_forms(order) & set(by_code)
            other = by_code[code]
            if name == DOLIPRANE:
                # The translation writes its "1 Comprimé" with EDQM 15036000, which is Patch: a
                # patch is no tablet, so the strength does not read it; the PN13 "1 cpr" of
                # DOLIPRANE 1 000 mg is 1000 mg. Only the dose's unit differs.
                assert (order.dose, order.dose_unit, other.dose, other.dose_unit) == (
                    1000,
                    "mg",
                    1,
                    "patch",
                )
                assert order.daily_dose == 3000 and other.frequency_per_day == 3
                continue
            assert (order.dose, order.frequency_per_day, order.route) == (
                other.dose,
                other.frequency_per_day,
                other.route,
            )
            assert (order.atc, order.as_needed, order.daily_dose) == (
                other.atc,
                other.as_needed,
                other.daily_dose,
            )


# Bad input --------------------------------------------------------------------------------


def mutate(content: bytes, old: str, new: str) -> bytes:
    assert old.encode() in content, old
    return content.replace(old.encode(), new.encode(), 1)


@pytest.fixture
def doliprane(shared_data: Path) -> bytes:
    return xml_path(shared_data, DOLIPRANE).read_bytes()


@pytest.fixture
def two_lines(shared_data: Path) -> bytes:
    return xml_path(shared_data, METFORMIN).read_bytes().replace(b"ISO-8859-1", b"UTF-8")


@pytest.mark.parametrize(
    ("old", "new", "where", "expected"),
    [
        ("</Patient>", "", "line", "well-formed XML (mismatched tag)"),
        ("<Ipp>", "<Ipp a=>", "line 5, column 20", "well-formed XML"),
        ("<Messages", "<!DOCTYPE m [<!ENTITY x 'y'>]><Messages", "line 2", "without DTD"),
        (
            "<Ipp>123456</Ipp>",
            "",
            "line 4, /Messages/M_Prescription_médicaments/Patient",
            "an <Ipp>",
        ),
        ("<M_Prescription_médicaments>", "<Foo>", "line", "well-formed XML"),
    ],
)
def test_fatal_problems_are_located(
    doliprane: bytes, old: str, new: str, where: str, expected: str
) -> None:
    with pytest.raises(FeedError) as caught:
        load_bytes(mutate(doliprane, old, new))
    assert caught.value.document == "bad.xml"
    assert caught.value.position is not None and where in caught.value.position
    assert expected in caught.value.expected


@pytest.mark.parametrize(
    ("old", "expected"),
    [
        ("<Id_élément_prescr>id1</Id_élément_prescr>", "an <Id_élément_prescr>"),
        ("<Code_composant_1>9216902</Code_composant_1>", "a <Code_composant_N>"),
    ],
)
def test_unreadable_line_is_reported_and_the_rest_loads(
    doliprane: bytes, old: str, expected: str
) -> None:
    outcome = load_bytes(mutate(doliprane, old, ""))
    assert orders(outcome) == []
    assert the(Patient, outcome).patient_id == "123456"
    [error] = outcome.errors
    assert error.expected.startswith(expected)
    assert error.position is not None and "/Elément_prescr_médic" in error.position


def test_wrong_root_element(doliprane: bytes) -> None:
    with pytest.raises(FeedError) as caught:
        load_bytes(doliprane.replace(b"Messages", b"Other"))
    assert caught.value.position == "line 2, /Other"
    assert caught.value.expected == "a PN13 <Messages> root element"


def test_truncated_document(doliprane: bytes) -> None:
    with pytest.raises(FeedError) as caught:
        load_bytes(doliprane[: len(doliprane) // 2])
    assert caught.value.position is not None
    assert caught.value.position.startswith("line ")
    assert "well-formed XML" in caught.value.expected


def test_bad_encoding_is_located(doliprane: bytes) -> None:
    latin1 = mutate(doliprane, "Doliprane cpr", "Dolipràne cpr").decode("utf-8").encode("latin-1")
    with pytest.raises(FeedError) as caught:
        load_bytes(latin1)
    assert caught.value.position == "line 3, column 22"  # the é of M_Prescription_médicaments
    assert "well-formed XML" in caught.value.expected
    with pytest.raises(FeedError):
        load_bytes("<?xml version='1.0'?><Messages/>".encode("utf-16-be"))


def test_bad_date_is_located_by_element_path_and_line(two_lines: bytes) -> None:
    bad = two_lines.replace(
        b"<Dh_d\xc3\xa9but>20250502190000", b"<Dh_d\xc3\xa9but>20251302190000", 1
    )
    outcome = load_bytes(bad)
    errors = [str(error) for error in outcome.errors]
    path = "/Messages/M_Prescription_médicaments/Prescription/Elément_prescr_médic[1]/Dh_début"
    assert any(
        f"line 33, {path}: expected a date-time" in e and "'20251302190000'" in e for e in errors
    )
    first, second = orders(outcome)  # both lines still load; the bad start is unknown
    assert (first.start, second.start) == (None, datetime(2025, 5, 2, 19))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("<Nombre>1</Nombre>", "<Nombre>un</Nombre>", "a number"),
        ("<Cré_arr_mod_val>C<", "<Cré_arr_mod_val>Z<", "a line status"),
        ("<Ipp>", "<Sexe>Q</Sexe><Ipp>", "a sex"),
        ("<Dh_fin>20071230180000<", "<Dh_fin>2007-12-30<", "a date-time"),
    ],
)
def test_bad_fields_are_reported_and_the_line_still_loads(
    doliprane: bytes, old: str, new: str, expected: str
) -> None:
    outcome = load_bytes(mutate(doliprane, old, new))
    assert [e for e in outcome.errors if expected in e.expected]
    assert all(e.position and e.position.startswith("line ") for e in outcome.errors)
    assert orders(outcome)


def test_one_bad_line_does_not_stop_the_other(two_lines: bytes) -> None:
    bad = two_lines.replace(
        b"<Id_\xc3\xa9l\xc3\xa9ment_prescr>20250502144844569</Id_\xc3\xa9l\xc3\xa9ment_prescr>",
        b"",
        1,
    )
    outcome = load_bytes(bad)
    assert [o.order_id for o in orders(outcome)] == ["20250502144844570"]
    [error] = outcome.errors
    assert (
        error.position
        == "line 26, /Messages/M_Prescription_médicaments/Prescription/Elément_prescr_médic[1]"
    )


def test_other_pn13_messages_are_reported_not_read(doliprane: bytes) -> None:
    extra = mutate(doliprane, "</Messages>", "<M_Dispensation><X/></M_Dispensation></Messages>")
    outcome = load_bytes(extra)
    assert orders(outcome)
    [error] = outcome.errors
    assert "other PN13 messages are not read" in error.expected
    with pytest.raises(FeedError):
        load_bytes(b"<Messages><M_Dispensation/></Messages>")


def test_sniff(shared_data: Path, doliprane: bytes) -> None:
    assert all(pn13.sniff(xml_path(shared_data, n).read_bytes()[:4096], n) for n in SAMPLES)
    assert pn13.sniff(PCA.read_bytes()[:4096], PCA.name)
    assert not pn13.sniff(b'{"resourceType": "Bundle"}', "b.json")
    assert not pn13.sniff(b"H|~^\\&|", "x.hpr")


# Golden files -----------------------------------------------------------------------------


def golden_form(outcome: ParseOutcome) -> dict[str, object]:
    facts = sorted(outcome.facts, key=lambda fact: (fact.kind, fact.fact_id))
    return {
        "facts": [{"kind": fact.kind, **fact.model_dump(mode="json")} for fact in facts],
        "errors": [str(error) for error in outcome.errors],
    }


@pytest.mark.parametrize("name", [*SAMPLES, PCA.name])
def test_golden(shared_data: Path, name: str) -> None:
    actual = golden_form(load(xml_path(shared_data, name)))
    path = GOLDEN / f"{Path(name).stem}.json"
    if vigie_settings.value("regenerate_golden"):
        path.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert actual == json.loads(path.read_text(encoding="utf-8"))


# Fuzz -------------------------------------------------------------------------------------


def parse_all(content: bytes) -> None:
    for raw in pn13.split("fuzz.xml", content):
        try:
            outcome = pn13.parse(raw)
        except FeedError as error:
            assert error.document == "fuzz.xml"
            continue
        assert all(isinstance(fact, Fact) for fact in outcome.facts)
        assert all(isinstance(error, FeedError) for error in outcome.errors)


@st.composite
def mutated_samples(draw: st.DrawFn) -> bytes:
    from tests.conftest import SHARED_DATA

    name = draw(st.sampled_from([*SAMPLES, PCA.name]))
    content = bytearray(xml_path(SHARED_DATA, name).read_bytes())
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, max(len(content) - 1, 0)))
        action = draw(st.sampled_from(["replace", "delete", "insert", "digits"]))
        if action == "replace":
            content[at : at + 1] = draw(
                st.sampled_from([b"<", b">", b"/", b"&", b"\x00", b"\xe9", b"9"])
            )
        elif action == "delete":
            del content[at : at + draw(st.integers(1, 40))]
        elif action == "insert":
            content[at:at] = draw(
                st.sampled_from(
                    [
                        b"<Nombre>x</Nombre>",
                        b"<Dh_d\xc3\xa9but>2020</Dh_d\xc3\xa9but>",
                        "<Elément_posologie/>".encode(),
                        "<Fréquence_structurée><Frq_échelle>9</Frq_échelle></Fréquence_structurée>".encode(),
                    ]
                )
            )
        else:  # change the text of an element to digits or junk, keeping the XML well-formed
            start = content.find(b">", at)
            end = content.find(b"<", start)
            if 0 <= start < end:
                content[start + 1 : end] = draw(
                    st.sampled_from([b"", b"0", b"-1", b"4", b"3", b"99999999999999", b"abc"])
                )
    return bytes(content)


@pytest.mark.property
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_samples())
def test_fuzz_mutated_samples(content: bytes) -> None:
    parse_all(content)


@pytest.mark.property
@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300).map(lambda t: f"<Messages>{t}</Messages>".encode()),
    )
)
def test_fuzz_random_text(content: bytes) -> None:
    parse_all(content)
