"""Small fact builders for tests: one line per fact, realistic defaults."""

from __future__ import annotations

from datetime import date, datetime

from vigie.facts import (
    Coding,
    Flag,
    FlagCode,
    LabResult,
    MedicationOrder,
    Observation,
    Patient,
    Sex,
    Source,
)

T0 = datetime(2024, 3, 1, 8, 0)


def source(position: str = "line 2", document: str = "test.csv") -> Source:
    return Source(feed="test", document=document, message_id="m1", position=position)


def patient(pid: str = "p1", born: date = date(1940, 5, 1), sex: Sex = Sex.FEMALE) -> Patient:
    return Patient(fact_id=pid, patient_id=pid, source=source(), birth_date=born, sex=sex)


def lab(
    pid: str,
    concept: str | None,
    value: float | None,
    unit: str | None = "mmol/L",
    time: datetime = T0,
    fid: str | None = None,
    code: str = "2823-3",
    flags: tuple[Flag, ...] = (),
) -> LabResult:
    return LabResult(
        fact_id=fid or f"lab-{pid}-{concept}-{time.isoformat()}",
        patient_id=pid,
        source=source(),
        concept=concept,
        code=Coding(system="LOINC", code=code),
        value=value,
        unit=unit,
        original_value=None if value is None else str(value),
        original_unit=unit,
        time=time,
        flags=flags,
    )


def weight(pid: str, kg: float, time: datetime = T0) -> Observation:
    return Observation(
        fact_id=f"w-{pid}-{time.isoformat()}",
        patient_id=pid,
        source=source(),
        concept="weight",
        code=Coding(system="LOINC", code="29463-7"),
        value=kg,
        unit="kg",
        time=time,
    )


def order(
    pid: str,
    oid: str,
    atc: str | None,
    dose: float | None = 1000,
    per_day: float | None = 3,
    unit: str = "mg",
) -> MedicationOrder:
    flags = () if atc else (Flag(code=FlagCode.UNMAPPED_CODE, detail="LOCAL X1"),)
    return MedicationOrder(
        fact_id=oid,
        patient_id=pid,
        source=source(),
        order_id=oid,
        drug=Coding(system="ATC" if atc else "LOCAL", code=atc or "X1", display="drug"),
        atc=atc,
        label="drug",
        dose=dose,
        dose_unit=unit,
        frequency_per_day=per_day,
        daily_dose=dose * per_day if dose is not None and per_day is not None else None,
        route="oral",
        start=T0,
        flags=flags,
    )
