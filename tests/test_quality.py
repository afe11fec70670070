from tests.factories import lab, order, patient, weight
from vigie.engine.factset import FactSet
from vigie.engine.quality import quality_report, render_text
from vigie.facts import Coding, Flag, FlagCode, MedicationOrder


def _facts() -> FactSet:
    unknown = (Flag(code=FlagCode.UNKNOWN_UNIT, detail="furlongs"),)
    unmapped = (Flag(code=FlagCode.UNMAPPED_CODE, detail="LOCAL KAL"),)
    return FactSet(
        [
            patient("p1"),
            patient("p2"),
            patient("p3"),
            lab("p1", "potassium", 12.0, fid="k-high"),
            lab("p1", "creatinine", -5.0, unit="µmol/L", fid="crea-neg"),
            lab("p2", "creatinine", 80.0, unit="µmol/L", fid="crea-ok"),
            lab("p2", "potassium", None, unit="furlongs", fid="k-unit", flags=unknown),
            lab("p3", None, 4.0, code="KAL", fid="u1", flags=unmapped),
            lab("p3", None, 4.2, code="KAL", fid="u2", flags=unmapped),
            weight("p1", 350.0),
            weight("p2", 70.0),
            order("p1", "o1", "N02BE01"),
            order("p2", "o2", None, dose=None),
            order("p3", "o3", "B01AB05", per_day=None),
            # codeine/paracetamol (N02AJ06: only combination products carry it in the BDPM)
            # without its composition
            order("p3", "o4", "N02AJ06"),
        ]
    )


def test_report_finds_each_kind_of_problem() -> None:
    report = quality_report(_facts(), {"loaded": 3}, ["x.hl7: PID-7: expected a date"])
    assert report.counts["lab"] == 6 and report.patients == 3
    assert report.unmapped_codes[0]["code"] == "KAL" and report.unmapped_codes[0]["count"] == 2
    assert {(u["concept"], u["unit"]) for u in report.unknown_units} == {("potassium", "furlongs")}
    implausible = {(v["concept"], v["value"]) for v in report.implausible_values}
    assert implausible == {("potassium", 12.0), ("creatinine", -5.0), ("weight", 350.0)}
    assert report.orders_without_dose == 1 and report.orders_without_frequency == 1
    assert report.orders_without_atc == 1
    assert report.orders_without_route == 0  # route-based rules (IV vancomycin) need it
    assert report.orders_without_composition == 1  # o4: its mg are paracetamol or codeine?
    assert report.patients_without_weight == 1  # p3
    # p1 has only a (implausible but numeric) creatinine; p3 none
    assert report.patients_without_creatinine == 1
    assert report.error_count == 1


def test_text_rendering_names_the_problems() -> None:
    text = render_text(quality_report(_facts()))
    assert "KAL" in text and "furlongs" in text and "350.0" in text
    assert "Orders without dose: 1" in text


def test_drug_lines_are_counted_per_feed_by_where_their_atc_came_from() -> None:
    by_name = Flag(code=FlagCode.ATC_FROM_NAME, detail="drug not mapped: LOCAL|AML5; ATC C08CA01")

    def fed(fact: MedicationOrder, feed: str, **changes: object) -> MedicationOrder:
        source = fact.source.model_copy(update={"feed": feed})
        return fact.model_copy(update={"source": source, **changes})

    amlodipine = Coding(system="LOCAL", code="AML5", display="amlodipine 5 mg")
    facts = [
        fed(order("p1", "h1", "N02BE01"), "hl7v2"),
        fed(order("p1", "h2", None), "hl7v2"),
        fed(order("p1", "h3", "C08CA01"), "hl7v2", flags=(by_name,), drug=amlodipine),
        fed(order("p2", "h4", "C08CA01"), "hl7v2", flags=(by_name,), drug=amlodipine),
        fed(order("p2", "f1", "B01AB05"), "fhir"),
    ]
    report = quality_report(facts)
    rows = {row["feed"]: row for row in report.drug_mapping}
    assert rows["hl7v2"] == {
        "feed": "hl7v2",
        "kind": "medication_order",
        "lines": 4,
        "by_code": 1,
        "by_name": 2,
        "unmapped": 1,
        "name_rate": 0.5,
    }
    assert (rows["fhir"]["lines"], rows["fhir"]["by_code"], rows["fhir"]["name_rate"]) == (1, 1, 0)
    assert [(r["code"], r["count"], r["atc"]) for r in report.mapped_by_name] == [
        ("AML5", 2, "C08CA01")
    ]
    assert [r["code"] for r in report.unmapped_codes] == ["X1"]  # the name-mapped are not
    assert "hl7v2  medication_order  4  1  2  1  50.0%" in render_text(report)
