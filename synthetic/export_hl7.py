"""Write HL7 v2.5 batches: ADT^A01/A03, ORU^R01 (labs, later weights), RDE^O11 (orders).

Messages are built as text with polars string expressions and written in time order, many per
file (one file per chunk); segments end in ``\\r`` and messages follow each other directly, each
``MSH`` starting a new one. MSH-10 is unique (``A01-SEJ0000001``,
``ORU-LAB000000001``, ``RDE-ORD00000001``...). Times are UTC ``YYYYMMDDHHMMSS+0000``.

What HL7 carries here: patients (PID), stays (PV1-3 ward^^bed, PV1-19 stay id, PV1-44/45),
admission weight and height (OBX in A01), conditions (DG1) and allergies (AL1) in A01,
pregnancy status and due date (OBX 82810-3 / 11778-8 in A01), labs (ORU OBX with LOINC and
UCUM), orders (RDE: ORC, RXE-2 ``ATC^label^WHOATC``, TQ1-3 pattern, TQ1-7/8, TQ1-9 PRN, RXR).
Administrations are not sent (no RAS).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from vigie.synthetic.export_fhir import DOSE_UCUM, write_lines
from vigie.synthetic.timefmt import as_hl7

__all__ = ["ROUTE_HL7", "Hl7Exporter", "hl7_messages"]

ROUTE_HL7 = {
    "oral": ("PO", "Orale"),
    "iv": ("IV", "Intraveineuse"),
    "sc": ("SC", "Sous-cutanée"),
    "im": ("IM", "Intramusculaire"),
    "transdermal": ("TD", "Transdermique"),
    "topical": ("TP", "Cutanée"),
}
CR = "\r"
# Event order within the same second: admission, then orders and results, discharge last.
_RANK = {"A01": 0, "RDE": 1, "ORU": 2, "A03": 3}


def _j(*parts: str | pl.Expr) -> pl.Expr:
    return pl.concat_str([pl.lit(p) if isinstance(p, str) else p for p in parts])


def _msh(kind: str, structure: str, control: pl.Expr, time: pl.Expr) -> pl.Expr:
    return _j(
        "MSH|^~\\&|VIGIE-SYNTH|HOPITAL|VIGIE|PUI|",
        time,
        f"||{kind}^{structure}|",
        control,
        "|P|2.5|||AL|NE||UNICODE UTF-8",
        CR,
    )


def _pid() -> pl.Expr:
    return _j(
        "PID|1||",
        pl.col("patient_id"),
        "^^^VIGIE^PI||SYNTHETIQUE^PATIENT||",
        as_hl7("birth_date", date_only=True),
        "|",
        pl.col("sex"),
        CR,
    )


def _pv1(discharge: bool = False) -> pl.Expr:
    """PV1 with location (ward^^bed), visit number (PV1-19), admit (44) and discharge (45)."""
    empty_4_18 = "|" * 16
    empty_20_43 = "|" * 25
    tail = [pl.lit("|"), as_hl7("discharge_time").fill_null("")] if discharge else []
    return pl.concat_str(
        [
            pl.lit("PV1|1|I|"),
            pl.col("ward"),
            pl.lit("^^"),
            pl.col("bed"),
            pl.lit("^HOPITAL"),
            pl.lit(empty_4_18),
            pl.col("stay_id"),
            pl.lit("^^^VIGIE^VN"),
            pl.lit(empty_20_43),
            as_hl7("admit_time"),
            *tail,
            pl.lit(CR),
        ]
    )


def _segments_per_stay(frame: pl.DataFrame, segment: pl.Expr, name: str) -> pl.DataFrame:
    return (
        frame.select(pl.col("_stay_id").alias("stay_id"), segment.alias("seg"))
        .group_by("stay_id", maintain_order=True)
        .agg(pl.col("seg").str.join("").alias(name))
    )


def _numeric_obx() -> list[str | pl.Expr]:
    """An OBX from its value type on: LOINC code, value, UCUM unit, final, observation time."""
    return [
        "|NM|",
        pl.col("code"),
        "^",
        pl.col("_display"),
        "^LN||",
        pl.col("value").cast(pl.Utf8),
        "|",
        pl.col("unit"),
        "^^UCUM|||||F|||",
        as_hl7("time"),
        CR,
    ]


def _admissions(t: dict[str, pl.DataFrame]) -> pl.DataFrame:
    stays = t["stays"].join(t["patients"], on="patient_id", how="left")
    first = (
        t["observations"].sort("time").group_by(["_stay_id", "code"], maintain_order=True).first()
    )
    vitals = _segments_per_stay(
        first,
        _j("OBX|", pl.col("code").replace({"29463-7": "1", "8302-2": "2"}), *_numeric_obx()),
        "vitals",
    )
    cond = t["conditions"].with_columns(pl.int_range(1, pl.len() + 1).over("_stay_id").alias("n"))
    dg1 = _segments_per_stay(
        cond,
        _j(
            "DG1|",
            pl.col("n").cast(pl.Utf8),
            "||",
            pl.col("code"),
            "^",
            pl.col("display"),
            "^I10||",
            as_hl7("onset"),
            "|W",
            CR,
        ),
        "dg1",
    )
    allergies = _per_patient_allergies(t["allergies"])
    pregnancies = _per_patient_pregnancies(t["pregnancies"])
    frame = (
        stays.join(vitals, on="stay_id", how="left")
        .join(dg1, on="stay_id", how="left")
        .join(allergies, on="patient_id", how="left")
        .join(pregnancies, on="patient_id", how="left")
    )
    control = _j("A01-", pl.col("stay_id"))
    text = pl.concat_str(
        [
            _msh("ADT", "A01^ADT_A01", control, as_hl7("admit_time")),
            _j("EVN|A01|", as_hl7("admit_time"), CR),
            _pid(),
            _pv1(),
            pl.col("vitals").fill_null(""),
            pl.col("preg").fill_null(""),
            pl.col("al1").fill_null(""),
            pl.col("dg1").fill_null(""),
        ]
    )
    return frame.select(
        pl.col("admit_time").alias("t"),
        pl.lit(_RANK["A01"]).alias("rank"),
        control.alias("id"),
        text.alias("text"),
    )


def _per_patient_allergies(allergies: pl.DataFrame) -> pl.DataFrame:
    system = pl.col("substance_system").replace_strict({"ATC": "WHOATC", "SNOMED": "SCT"})
    kind = pl.when(pl.col("atc") != "").then(pl.lit("DA")).otherwise(pl.lit("MA"))
    severity = pl.col("criticality").replace_strict({"high": "SV", "low": "MI"})
    frame = allergies.with_columns(pl.int_range(1, pl.len() + 1).over("patient_id").alias("n"))
    return (
        frame.select(
            "patient_id",
            _j(
                "AL1|",
                pl.col("n").cast(pl.Utf8),
                "|",
                kind,
                "|",
                pl.col("substance_code"),
                "^",
                pl.col("substance_display"),
                "^",
                system,
                "|",
                severity,
                "||",
                as_hl7("recorded", date_only=True),
                CR,
            ).alias("seg"),
        )
        .group_by("patient_id", maintain_order=True)
        .agg(pl.col("seg").str.join("").alias("al1"))
    )


def _per_patient_pregnancies(pregnancies: pl.DataFrame) -> pl.DataFrame:
    answer = (
        pl.when(pl.col("status") == "pregnant")
        .then(pl.lit("LA15173-0^Pregnant^LN"))
        .otherwise(pl.lit("LA26683-5^Not pregnant^LN"))
    )
    due = (
        pl.when(pl.col("status") == "pregnant")
        .then(
            _j(
                "OBX|4|DT|11778-8^Delivery date Estimated^LN||",
                as_hl7("estimated_due_date", date_only=True),
                "||||||F|||",
                as_hl7("recorded"),
                CR,
            )
        )
        .otherwise(pl.lit(""))
    )
    seg = _j(
        "OBX|3|CWE|82810-3^Pregnancy status^LN||", answer, "||||||F|||", as_hl7("recorded"), CR, due
    )
    return (
        pregnancies.select("patient_id", seg.alias("seg"))
        .group_by("patient_id", maintain_order=True)
        .agg(pl.col("seg").str.join("").alias("preg"))
    )


def _discharges(t: dict[str, pl.DataFrame]) -> pl.DataFrame:
    stays = (
        t["stays"]
        .filter(pl.col("discharge_time").is_not_null())
        .join(t["patients"], on="patient_id", how="left")
    )
    control = _j("A03-", pl.col("stay_id"))
    text = pl.concat_str(
        [
            _msh("ADT", "A03^ADT_A03", control, as_hl7("discharge_time")),
            _j("EVN|A03|", as_hl7("discharge_time"), CR),
            _pid(),
            _pv1(True),
        ]
    )
    return stays.select(
        pl.col("discharge_time").alias("t"),
        pl.lit(_RANK["A03"]).alias("rank"),
        control.alias("id"),
        text.alias("text"),
    )


def _range() -> pl.Expr:
    low, high = pl.col("reference_low").cast(pl.Utf8), pl.col("reference_high").cast(pl.Utf8)
    return (
        pl.when(low.is_not_null() & high.is_not_null())
        .then(_j(low, "-", high))
        .when(high.is_not_null())
        .then(_j("<", high))
        .when(low.is_not_null())
        .then(_j(">", low))
        .otherwise(pl.lit(""))
    )


def _flag() -> pl.Expr:
    return (
        pl.when(pl.col("value") > pl.col("reference_high"))
        .then(pl.lit("H"))
        .when(pl.col("value") < pl.col("reference_low"))
        .then(pl.lit("L"))
        .otherwise(pl.lit(""))
    )


def _results(t: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """One ORU^R01 per panel (patient, stay, time): lab results, and later weights."""
    labs = t["labs"].select(
        "patient_id",
        "_stay_id",
        "time",
        "lab_id",
        _j(
            "|NM|",
            pl.col("code"),
            "^",
            pl.col("_display"),
            "^LN||",
            pl.col("value").cast(pl.Utf8),
            "|",
            pl.col("unit"),
            "^^UCUM|",
            _range(),
            "|",
            _flag(),
            "|||F|||",
            as_hl7("time"),
            CR,
        ).alias("obx"),
    )
    first_times = t["observations"].group_by("_stay_id").agg(pl.col("time").min().alias("t0"))
    later = t["observations"].join(first_times, on="_stay_id").filter(pl.col("time") > pl.col("t0"))
    weights = later.select(
        "patient_id",
        "_stay_id",
        "time",
        pl.col("observation_id").alias("lab_id"),
        _j(*_numeric_obx()).alias("obx"),
    )
    rows = pl.concat([labs, weights]).with_columns(
        pl.int_range(1, pl.len() + 1).over(["_stay_id", "time"]).alias("n")
    )
    panels = rows.group_by(["patient_id", "_stay_id", "time"], maintain_order=True).agg(
        pl.col("lab_id").first().alias("first_id"),
        _j("OBX|", pl.col("n").cast(pl.Utf8), pl.col("obx")).str.join("").alias("obx"),
    )
    stays = t["stays"].rename({"stay_id": "_stay_id"}).drop("patient_id")
    panels = (
        panels.join(stays, on="_stay_id", how="left")
        .join(t["patients"], on="patient_id", how="left")
        .rename({"_stay_id": "stay_id"})
    )
    control = _j("ORU-", pl.col("first_id"))
    text = pl.concat_str(
        [
            _msh("ORU", "R01^ORU_R01", control, as_hl7("time")),
            _pid(),
            _pv1(),
            _j("ORC|RE|", pl.col("first_id"), "^VIGIE", CR),
            _j(
                "OBR|1|",
                pl.col("first_id"),
                "^VIGIE|",
                pl.col("first_id"),
                "^LABO|BIO^Bilan biologique^L|||",
                as_hl7("time"),
                CR,
            ),
            pl.col("obx"),
        ]
    )
    return panels.select(
        pl.col("time").alias("t"),
        pl.lit(_RANK["ORU"]).alias("rank"),
        control.alias("id"),
        text.alias("text"),
    )


def _orders(t: dict[str, pl.DataFrame]) -> pl.DataFrame:
    orders = (
        t["orders"]
        .join(t["stays"].select("stay_id", "ward", "bed", "admit_time"), on="stay_id", how="left")
        .join(t["patients"], on="patient_id", how="left")
    )
    status = pl.col("status").replace_strict({"active": "IP", "completed": "CM", "stopped": "DC"})
    route_code = pl.col("route").replace_strict({k: v[0] for k, v in ROUTE_HL7.items()})
    route_text = pl.col("route").replace_strict({k: v[1] for k, v in ROUTE_HL7.items()})
    unit = pl.col("dose_unit").replace_strict(DOSE_UCUM)
    dose = pl.col("dose").cast(pl.Utf8)
    control = _j("RDE-", pl.col("order_id"))
    text = pl.concat_str(
        [
            _msh("RDE", "O11^RDE_O11", control, as_hl7("start")),
            _pid(),
            _pv1(),
            _j(
                "ORC|NW|",
                pl.col("order_id"),
                "^VIGIE|||",
                status,
                "||||",
                as_hl7("start"),
                "|||",
                pl.col("prescriber"),
                CR,
            ),
            _j(
                "RXE||",
                pl.col("atc"),
                "^",
                pl.col("label"),
                "^WHOATC|",
                dose,
                "|",
                dose,
                "|",
                unit,
                "^^UCUM",
                CR,
            ),
            _j(
                "TQ1|1||",
                pl.col("_hl7_pattern"),
                "||||",
                as_hl7("start"),
                "|",
                as_hl7("end").fill_null(""),
                "|",
                pl.when(pl.col("as_needed")).then(pl.lit("PRN")).otherwise(pl.lit("")),
                CR,
            ),
            _j("RXR|", route_code, "^", route_text, "^HL70162", CR),
        ]
    )
    return orders.select(
        pl.col("start").alias("t"),
        pl.lit(_RANK["RDE"]).alias("rank"),
        control.alias("id"),
        text.alias("text"),
    )


def hl7_messages(tables: dict[str, pl.DataFrame]) -> pl.Series:
    """Every message of a chunk, in time order."""
    frames = [_admissions(tables), _orders(tables), _results(tables), _discharges(tables)]
    return pl.concat(frames).sort(["t", "rank", "id"])["text"]


class Hl7Exporter:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.files: list[Path] = []
        for old in out.glob("vigie_*.hl7"):
            old.unlink()

    def write(self, tables: dict[str, pl.DataFrame]) -> None:
        path = self.out / f"vigie_{len(self.files) + 1:04d}.hl7"
        with path.open("wb") as handle:
            write_lines(hl7_messages(tables), handle, "")
        self.files.append(path)

    def close(self) -> list[Path]:
        return self.files
