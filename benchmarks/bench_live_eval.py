"""Live evaluation latency: one new lab result re-evaluated against the default pack.

A realistic inpatient (a dozen active lines, a week of labs: potassium, sodium, creatinine,
INR, glucose, platelets twice a day, a weight) is loaded into a ``LiveEvaluator`` with the
default pack. Each timed step adds one new potassium result (normal, so no alert churn; a
second figure uses a high potassium that keeps a hyperkalaemia alert firing) and measures
``add``: dependency lookup, record update, re-evaluation of the dependent rules for that patient,
alert diff. Prints the median and its ratio to the 50 µs target, then the time of a full
evaluation of the same patient with the default and ANSM packs (``evaluate`` on one
``PatientRecord``).

    .venv/bin/python benchmarks/bench_live_eval.py [--adds 2000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import date, datetime, timedelta
from pathlib import Path

from vigie.engine import FactSet, LiveEvaluator, evaluate, load_pack
from vigie.engine.load import LoadedPack
from vigie.facts import AnyFact, Coding, LabResult, MedicationOrder, Observation, Patient, Sex
from vigie.facts import Source as FactSource
from vigie.rules import compile_pack

TARGET_SECONDS = 50e-6
REPO = Path(__file__).parents[1]
START = datetime(2025, 1, 6, 8, 0)
SOURCE = FactSource(feed="hl7v2", document="bench.hl7", position="OBX[1]-5")

LINES = (  # ATC, label, dose, unit, per day, route
    ("C09AA05", "ramipril 5 mg", 5, "mg", 1, "oral"),
    ("C03CA01", "furosémide 40 mg", 40, "mg", 2, "oral"),
    ("B01AB05", "énoxaparine 4000 UI", 4000, "IU", 1, "sc"),
    ("N02BE01", "paracétamol 1 g", 1000, "mg", 3, "oral"),
    ("A02BC01", "oméprazole 20 mg", 20, "mg", 1, "oral"),
    ("C10AA05", "atorvastatine 40 mg", 40, "mg", 1, "oral"),
    ("N02AA01", "morphine 10 mg", 10, "mg", 4, "oral"),
    ("A06AD15", "macrogol 10 g", 10, "g", 1, "oral"),
    ("N05CF01", "zopiclone 7,5 mg", 7.5, "mg", 1, "oral"),
    ("A10BA02", "metformine 1000 mg", 1000, "mg", 2, "oral"),
    ("C07AB07", "bisoprolol 5 mg", 5, "mg", 1, "oral"),
    ("H03AA01", "lévothyroxine 75 µg", 75, "µg", 1, "oral"),
)
LABS = (  # concept, unit, value
    ("potassium", "mmol/L", 4.3),
    ("sodium", "mmol/L", 138.0),
    ("creatinine", "µmol/L", 95.0),
    ("inr", None, 1.1),
    ("glucose", "mmol/L", 6.1),
    ("platelets", "G/L", 240.0),
)


def pack_file(name: str) -> LoadedPack:
    path = REPO / "rules" / "packs" / name
    ir, _ = compile_pack(path.read_text(encoding="utf-8"), str(path))
    assert ir is not None, f"{path} does not compile"
    return load_pack(ir)


def patient_facts() -> list[AnyFact]:
    facts: list[AnyFact] = [
        Patient(fact_id="P1", patient_id="P1", source=SOURCE, birth_date=date(1948, 4, 2),
                sex=Sex.MALE),
        Observation(fact_id="W1", patient_id="P1", source=SOURCE, concept="weight",
                    code=Coding(code="29463-7"), value=72.0, unit="kg", time=START),
    ]  # fmt: skip
    for i, (atc, label, dose, unit, per_day, route) in enumerate(LINES):
        facts.append(
            MedicationOrder(
                fact_id=f"O{i}", patient_id="P1", source=SOURCE, order_id=f"O{i}",
                drug=Coding(code=atc, display=label), atc=atc, label=label, dose=dose,
                dose_unit=unit, frequency_per_day=per_day, daily_dose=dose * per_day,
                route=route, start=START - timedelta(days=2),
            )
        )  # fmt: skip
    for half_day in range(14):
        for concept, unit, value in LABS:
            facts.append(lab(f"L{half_day}-{concept}", concept, unit, value,
                             START + timedelta(hours=12 * half_day)))  # fmt: skip
    return facts


def lab(fid: str, concept: str, unit: str | None, value: float, time: datetime) -> LabResult:
    return LabResult(
        fact_id=fid, patient_id="P1", source=SOURCE, concept=concept, code=Coding(code=concept),
        value=value, unit=unit, time=time,
    )  # fmt: skip


def time_adds(pack: LoadedPack, adds: int, value: float) -> float:
    """Median seconds of one ``add`` of a potassium result (facts built beforehand)."""
    live = LiveEvaluator(pack, now=START)
    for fact in patient_facts():
        live.add(fact)
    end = START + timedelta(days=7)
    results = [
        lab(f"K{i}", "potassium", "mmol/L", value, end + timedelta(minutes=i)) for i in range(adds)
    ]
    samples = []
    clock = time.perf_counter
    for fact in results:
        began = clock()
        live.add(fact)
        samples.append(clock() - began)
    return statistics.median(samples)


def time_full(packs: list[LoadedPack], repeat: int) -> float:
    record = FactSet(patient_facts()).patient("P1")
    at = START + timedelta(days=7)
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        for pack in packs:
            evaluate(pack, record, at, level=3)
        best = min(best, time.perf_counter() - began)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adds", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    default, ansm = pack_file("default.rules"), pack_file("ansm-interactions.rules")
    normal = min(time_adds(default, args.adds, 4.4) for _ in range(args.repeat))
    high = min(time_adds(default, args.adds, 5.9) for _ in range(args.repeat))
    print(
        f"live add of one potassium (default pack, {len(LINES)} active lines, 7 days of labs): "
        f"median {normal * 1e6:.1f} µs — {normal / TARGET_SECONDS:.2f}× the 50 µs target"
    )
    print(
        f"  same with a high potassium (hyperkalaemia alert re-explained on each add): "
        f"median {high * 1e6:.1f} µs — {high / TARGET_SECONDS:.2f}× the target"
    )
    full = time_full([default, ansm], args.repeat)
    print(
        f"full evaluation of that patient, default + ANSM packs ({len(default.rules)} + "
        f"{len(ansm.rules)} rules, all levels): {full * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main()
