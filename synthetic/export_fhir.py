"""Write FHIR R4 Bulk NDJSON: one file per resource type, one resource per line.

Resources are built as text with polars string expressions (no per-resource Python objects).
Drugs are coded in ATC (``http://www.whocc.no/atc``), labs in LOINC with UCUM units, routes in
SNOMED CT, diagnoses in ICD-10; times are UTC with a ``Z``. Pregnancy is an Observation
(LOINC 82810-3, with the estimated due date 11778-8 as a component).
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import polars as pl

from vigie.synthetic.timefmt import as_date, as_iso_z

__all__ = ["RESOURCE_FILES", "ROUTE_SNOMED", "FhirExporter", "fhir_lines"]

ATC = "http://www.whocc.no/atc"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10"

ROUTE_SNOMED = {
    "oral": ("26643006", "Oral route"),
    "iv": ("47625008", "Intravenous route"),
    "sc": ("34206005", "Subcutaneous route"),
    "im": ("78421000", "Intramuscular route"),
    "transdermal": ("45890007", "Transdermal route"),
    "topical": ("6064005", "Topical route"),
}
DOSE_UCUM = {"mg": "mg", "g": "g", "µg": "ug", "IU": "[iU]", "µg/h": "ug/h", "mL": "mL"}

RESOURCE_FILES = (
    "Location",
    "Patient",
    "Encounter",
    "MedicationRequest",
    "MedicationAdministration",
    "Observation",
    "Condition",
    "AllergyIntolerance",
)


def _s(value: str | pl.Expr) -> pl.Expr:
    """A JSON string literal of a column (values never hold quotes or backslashes)."""
    expr = pl.col(value) if isinstance(value, str) else value
    return pl.concat_str([pl.lit('"'), expr, pl.lit('"')])


def _j(*parts: str | pl.Expr) -> pl.Expr:
    """Concatenate literal JSON fragments and expressions."""
    return pl.concat_str([pl.lit(p) if isinstance(p, str) else p for p in parts])


def _opt(prefix: str, expr: pl.Expr, suffix: str = "") -> pl.Expr:
    return pl.when(expr.is_not_null()).then(_j(prefix, expr, suffix)).otherwise(pl.lit(""))


def _ref(kind: str, column: str) -> pl.Expr:
    return _j(f'{{"reference":"{kind}/', pl.col(column), '"}')


def _num(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.Utf8)


def _quantity(value: str, unit: pl.Expr) -> pl.Expr:
    return _j(
        '{"value":', _num(value), ',"unit":', _s(unit), f',"system":"{UCUM}","code":', _s(unit), "}"
    )


def _patients(t: pl.DataFrame) -> pl.Series:
    return t.select(
        _j(
            '{"resourceType":"Patient","id":',
            _s("patient_id"),
            ',"identifier":[{"system":"urn:vigie:synthetic:patient","value":',
            _s("patient_id"),
            '}],"gender":',
            _s(pl.col("sex").replace({"F": "female", "M": "male"})),
            ',"birthDate":',
            _s(as_date("birth_date")),
            "}",
        )
    ).to_series()


def _encounters(t: pl.DataFrame) -> pl.Series:
    physical = (
        '"physicalType":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/'
        'location-physical-type","code":"'
    )
    return t.select(
        _j(
            '{"resourceType":"Encounter","id":',
            _s("stay_id"),
            ',"status":',
            _s("status"),
            ',"class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"IMP",'
            '"display":"inpatient encounter"},"subject":',
            _ref("Patient", "patient_id"),
            ',"period":{"start":',
            _s(as_iso_z("admit_time")),
            _opt(',"end":"', as_iso_z("discharge_time"), '"'),
            '},"location":[{"location":{"reference":"Location/',
            pl.col("ward"),
            '","display":',
            _s("ward"),
            "},",
            physical,
            'wa"}]}},{"location":{"reference":"Location/',
            pl.col("ward"),
            "-",
            pl.col("bed"),
            '","display":',
            _s("bed"),
            "},",
            physical,
            'bd"}]}}]}',
        )
    ).to_series()


def _route(column: str = "route") -> pl.Expr:
    code = pl.col(column).replace_strict({k: v[0] for k, v in ROUTE_SNOMED.items()})
    display = pl.col(column).replace_strict({k: v[1] for k, v in ROUTE_SNOMED.items()})
    return _j(
        f'{{"coding":[{{"system":"{SNOMED}","code":',
        _s(code),
        ',"display":',
        _s(display),
        '}],"text":',
        _s(column),
        "}",
    )


def _medication() -> pl.Expr:
    return _j(
        f'{{"coding":[{{"system":"{ATC}","code":',
        _s("atc"),
        ',"display":',
        _s("label"),
        '}],"text":',
        _s("label"),
        "}",
    )


def _dose_unit() -> pl.Expr:
    return pl.col("dose_unit").replace_strict(DOSE_UCUM)


def _requests(t: pl.DataFrame) -> pl.Series:
    status = pl.col("status")
    return t.select(
        _j(
            '{"resourceType":"MedicationRequest","id":',
            _s("order_id"),
            ',"status":',
            _s(status),
            ',"intent":"order","medicationCodeableConcept":',
            _medication(),
            ',"subject":',
            _ref("Patient", "patient_id"),
            ',"encounter":',
            _ref("Encounter", "stay_id"),
            ',"authoredOn":',
            _s(as_iso_z("start")),
            ',"requester":{"display":',
            _s("prescriber"),
            '},"dosageInstruction":[{"text":',
            _s(
                pl.concat_str(
                    [
                        _num("dose"),
                        pl.lit(" "),
                        pl.col("dose_unit"),
                        pl.lit(" "),
                        pl.col("frequency_text"),
                    ]
                )
            ),
            ',"timing":{"repeat":{"boundsPeriod":{"start":',
            _s(as_iso_z("start")),
            _opt(',"end":"', as_iso_z("end"), '"'),
            '},"frequency":',
            _num("_frequency"),
            ',"period":',
            _num("_period"),
            ',"periodUnit":',
            _s("_period_unit"),
            '}},"asNeededBoolean":',
            pl.col("as_needed").cast(pl.Utf8).str.to_lowercase(),
            ',"route":',
            _route(),
            ',"doseAndRate":[{"doseQuantity":',
            _quantity("dose", _dose_unit()),
            "}]}]}",
        )
    ).to_series()


def _administrations(t: pl.DataFrame) -> pl.Series:
    return t.select(
        _j(
            '{"resourceType":"MedicationAdministration","id":',
            _s("administration_id"),
            ',"status":',
            _s("status"),
            ',"medicationCodeableConcept":',
            _medication(),
            ',"subject":',
            _ref("Patient", "patient_id"),
            ',"context":',
            _ref("Encounter", "_stay_id"),
            ',"effectiveDateTime":',
            _s(as_iso_z("time")),
            ',"request":',
            _ref("MedicationRequest", "order_id"),
            ',"dosage":{"route":',
            _route(),
            ',"dose":',
            _quantity("dose", _dose_unit()),
            "}}",
        )
    ).to_series()


def _category(code: str) -> str:
    return (
        '"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/'
        f'observation-category","code":"{code}"}}]}}]'
    )


def _labs(t: pl.DataFrame) -> pl.Series:
    unit = pl.col("unit")
    has_low = pl.col("reference_low").is_not_null()
    has_high = pl.col("reference_high").is_not_null()
    ranges = pl.concat_str(
        [
            pl.when(has_low)
            .then(_j('"low":', _quantity("reference_low", unit)))
            .otherwise(pl.lit("")),
            pl.when(has_low & has_high).then(pl.lit(",")).otherwise(pl.lit("")),
            pl.when(has_high)
            .then(_j('"high":', _quantity("reference_high", unit)))
            .otherwise(pl.lit("")),
        ]
    )
    return t.select(
        _j(
            '{"resourceType":"Observation","id":',
            _s("lab_id"),
            ',"status":"final",',
            _category("laboratory"),
            f',"code":{{"coding":[{{"system":"{LOINC}","code":',
            _s("code"),
            ',"display":',
            _s("_display"),
            '}]},"subject":',
            _ref("Patient", "patient_id"),
            ',"encounter":',
            _ref("Encounter", "_stay_id"),
            ',"effectiveDateTime":',
            _s(as_iso_z("time")),
            ',"valueQuantity":',
            _quantity("value", unit),
            pl.when(has_low | has_high)
            .then(_j(',"referenceRange":[{', ranges, "}]"))
            .otherwise(pl.lit("")),
            "}",
        )
    ).to_series()


def _vitals(t: pl.DataFrame) -> pl.Series:
    return t.select(
        _j(
            '{"resourceType":"Observation","id":',
            _s("observation_id"),
            ',"status":"final",',
            _category("vital-signs"),
            f',"code":{{"coding":[{{"system":"{LOINC}","code":',
            _s("code"),
            ',"display":',
            _s("_display"),
            '}]},"subject":',
            _ref("Patient", "patient_id"),
            ',"encounter":',
            _ref("Encounter", "_stay_id"),
            ',"effectiveDateTime":',
            _s(as_iso_z("time")),
            ',"valueQuantity":',
            _quantity("value", pl.col("unit")),
            "}",
        )
    ).to_series()


def _pregnancies(t: pl.DataFrame) -> pl.Series:
    answer = (
        pl.when(pl.col("status") == "pregnant")
        .then(pl.lit('{"system":"http://loinc.org","code":"LA15173-0","display":"Pregnant"}'))
        .otherwise(
            pl.lit('{"system":"http://loinc.org","code":"LA26683-5","display":"Not pregnant"}')
        )
    )
    due = _j(
        ',"component":[{"code":{"coding":[{"system":"http://loinc.org","code":"11778-8",'
        '"display":"Delivery date Estimated"}]},"valueDateTime":',
        _s(as_date("estimated_due_date")),
        "}]",
    )
    return t.select(
        _j(
            '{"resourceType":"Observation","id":',
            _s("pregnancy_id"),
            ',"status":"final",',
            _category("social-history"),
            ',"code":{"coding":[{"system":"http://loinc.org",'
            '"code":"82810-3","display":"Pregnancy status"}]},"subject":',
            _ref("Patient", "patient_id"),
            ',"effectiveDateTime":',
            _s(as_iso_z("recorded")),
            ',"valueCodeableConcept":{"coding":[',
            answer,
            "]}",
            pl.when(pl.col("status") == "pregnant").then(due).otherwise(pl.lit("")),
            "}",
        )
    ).to_series()


def _conditions(t: pl.DataFrame) -> pl.Series:
    return t.select(
        _j(
            '{"resourceType":"Condition","id":',
            _s("condition_id"),
            ',"clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/'
            'condition-clinical","code":',
            _s("clinical_status"),
            '}]},"verificationStatus":{"coding":[{"system":"http://terminology.hl7.org/'
            'CodeSystem/condition-ver-status","code":"confirmed"}]},"code":{"coding":[{"system":"'
            f'{ICD10}","code":',
            _s("code"),
            ',"display":',
            _s("display"),
            '}],"text":',
            _s("display"),
            '},"subject":',
            _ref("Patient", "patient_id"),
            ',"encounter":',
            _ref("Encounter", "_stay_id"),
            ',"onsetDateTime":',
            _s(as_iso_z("onset")),
            _opt(',"abatementDateTime":"', as_iso_z("abatement"), '"'),
            "}",
        )
    ).to_series()


def _allergies(t: pl.DataFrame) -> pl.Series:
    system = pl.col("substance_system").replace_strict({"ATC": ATC, "SNOMED": SNOMED})
    category = (
        pl.when(pl.col("atc") != "").then(pl.lit("medication")).otherwise(pl.lit("environment"))
    )
    return t.select(
        _j(
            '{"resourceType":"AllergyIntolerance","id":',
            _s("allergy_id"),
            ',"clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/'
            'allergyintolerance-clinical","code":',
            _s("clinical_status"),
            '}]},"verificationStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/'
            'allergyintolerance-verification","code":"confirmed"}]},"type":"allergy","category":[',
            _s(category),
            '],"criticality":',
            _s("criticality"),
            ',"code":{"coding":[{"system":',
            _s(system),
            ',"code":',
            _s("substance_code"),
            ',"display":',
            _s("substance_display"),
            '}],"text":',
            _s("substance_display"),
            '},"patient":',
            _ref("Patient", "patient_id"),
            ',"recordedDate":',
            _s(as_iso_z("recorded")),
            "}",
        )
    ).to_series()


def fhir_lines(tables: dict[str, pl.DataFrame]) -> dict[str, list[pl.Series]]:
    """NDJSON lines per resource type for one chunk (Location is written from the wards)."""
    return {
        "Patient": [_patients(tables["patients"])],
        "Encounter": [_encounters(tables["stays"])],
        "MedicationRequest": [_requests(tables["orders"])],
        "MedicationAdministration": [_administrations(tables["administrations"])],
        "Observation": [
            _labs(tables["labs"]),
            _vitals(tables["observations"]),
            _pregnancies(tables["pregnancies"]),
        ],
        "Condition": [_conditions(tables["conditions"])],
        "AllergyIntolerance": [_allergies(tables["allergies"])],
    }


def location_lines(wards: list[tuple[str, str, int]]) -> list[str]:
    """Ward and bed Location resources (``wards``: code, name, beds)."""
    physical = (
        '"physicalType":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/'
        'location-physical-type","code":"'
    )
    lines = []
    for code, name, beds in wards:
        lines.append(
            f'{{"resourceType":"Location","id":"{code}","status":"active",'
            f'"name":"{name}","mode":"instance",{physical}wa"}}]}}}}'
        )
        for b in range(1, beds + 1):
            lines.append(
                f'{{"resourceType":"Location","id":"{code}-{b:03d}","status":"active",'
                f'"name":"{b:03d}","mode":"instance",{physical}bd"}}]}},'
                f'"partOf":{{"reference":"Location/{code}"}}}}'
            )
    return lines


def write_lines(series: pl.Series, handle: BinaryIO, terminator: str) -> None:
    """Write text values as they are, each followed by ``terminator`` (no Python strings)."""
    series.to_frame("line").write_csv(
        handle, include_header=False, quote_style="never", line_terminator=terminator
    )


class FhirExporter:
    def __init__(self, out: Path, wards: list[tuple[str, str, int]]) -> None:
        self.out = out
        self.files = [out / f"{name}.ndjson" for name in RESOURCE_FILES]
        for path in self.files:
            path.unlink(missing_ok=True)
        (out / "Location.ndjson").write_text("\n".join(location_lines(wards)) + "\n", "utf-8")

    def write(self, tables: dict[str, pl.DataFrame]) -> None:
        for name, parts in fhir_lines(tables).items():
            lines = [s for s in parts if len(s)]
            if not lines:
                continue
            with (self.out / f"{name}.ndjson").open("ab") as handle:
                for series in lines:
                    write_lines(series, handle, "\n")

    def close(self) -> list[Path]:
        return [p for p in self.files if p.exists()]
