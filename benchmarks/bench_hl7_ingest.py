"""HL7 v2 ingest throughput: facts per second for ORU^R01 + RDE^O11 messages on one core.

Generates realistic messages (a lab report of 8 results, a pharmacy order of 2 lines with TQ1
and RXR, both with PID and PV1), cuts them with ``split`` and parses them with ``parse``, and
prints facts per second and the ratio to the 20,000 facts/s target, for each field reader
(``VIGIE_HL7_PARSER``: ``lazy``, the default, and ``python-hl7``), then the ratio between the
two. The figure is the best of ``--repeat`` runs (wall clock, like ``timeit``): the machine is
shared, and the slower runs measure the neighbours rather than the connector.

    .venv/bin/python benchmarks/bench_hl7_ingest.py [--messages 4000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from datetime import datetime, timedelta

from vigie.connectors.hl7v2 import connector as hl7v2
from vigie.connectors.hl7v2.readers import HL7_PARSERS
from vigie.terminology import default_terminology

TARGET_FACTS_PER_SECOND = 20_000

_LABS = (
    ("2823-3", "Potassium", "mmol/L", "3.5-5.1", 3.0, 6.5),
    ("2951-2", "Sodium", "mmol/L", "136-145", 128, 150),
    ("2160-0", "Creatinine", "mg/dL", "0.6-1.2", 0.5, 4.0),
    ("14682-9", "Créatinine", "umol/L", "45-104", 40, 400),
    ("2345-7", "Glucose", "mg/dL", "70-110", 60, 300),
    ("6301-6", "INR", "{INR}", "0.8-1.2", 0.9, 4.5),
    ("777-3", "Platelets", "10*9/L", "150-400", 20, 500),
    ("29463-7", "Body weight", "kg", "", 40, 120),
)
_DRUGS = (
    ("C03CA01", "FUROSEMIDE 40 MG CP", "40", "mg", "BID", "PO"),
    ("B01AB05", "ENOXAPARINE 4000 UI", "4000", "IU", "QD", "SC"),
    ("N02BE01", "PARACETAMOL 1 G", "1", "g", "Q6H", "PO"),
    ("J01CA04", "AMOXICILLINE 1 G", "1", "g", "TID", "IV"),
    ("C09AA05", "RAMIPRIL 5 MG CP", "5", "mg", "QD", "PO"),
)


def _header(kind: str, number: int, moment: datetime) -> str:
    return (
        f"MSH|^~\\&|SIL|CHU|VIGIE|CHU|{moment:%Y%m%d%H%M%S}||{kind}|MSG{number:07d}|P|2.5"
        "|||||FRA|8859/1\r"
        f"PID|1||IPP{number % 997:06d}^^^CHU^PI||NOM^Prénom||19{40 + number % 50}0315|"
        f"{'FM'[number % 2]}\r"
        f"PV1|1|I|CARDIO^12^1^CHU|||||||||||||||||NDA{number % 1999:07d}||||||||||||||||||||"
        f"||||||{moment - timedelta(days=2):%Y%m%d%H%M}\r"
    )


def lab_report(number: int, moment: datetime, rng: random.Random) -> str:
    segments = [
        _header("ORU^R01^ORU_R01", number, moment),
        f"ORC|RE|PRE{number}|LAB{number}\r",
        f"OBR|1|PRE{number}|LAB{number}|BIO^Bilan^L|||{moment:%Y%m%d%H%M}\r",
    ]
    for index, (code, label, unit, reference, low, high) in enumerate(_LABS, start=1):
        value = round(rng.uniform(low, high), 2)
        segments.append(
            f"OBX|{index}|NM|{code}^{label}^LN||{value}|{unit}^^UCUM|{reference}|N|||F|||"
            f"{moment:%Y%m%d%H%M}\r"
        )
    return "".join(segments)


def pharmacy_order(number: int, moment: datetime, rng: random.Random) -> str:
    segments = [_header("RDE^O11^RDE_O11", number, moment)]
    for line in range(2):
        atc, label, dose, unit, pattern, route = rng.choice(_DRUGS)
        segments.append(
            f"ORC|NW|P{number}-{line}|F{number}-{line}||||||{moment:%Y%m%d%H%M}|||"
            f"DR{number % 37}^MARTIN^PAUL\r"
            f"RXE||{atc}^{label}^WHOATC|{dose}||{unit}|||||||||||||||||||||||||\r"
            f"TQ1|1||{pattern}||||{moment:%Y%m%d%H%M}\r"
            f"RXR|{route}^^HL70162\r"
        )
    return "".join(segments)


def build_batch(messages: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    start = datetime(2024, 3, 1, 8, 0)
    parts = []
    for number in range(messages):
        moment = start + timedelta(minutes=number)
        make = lab_report if number % 2 == 0 else pharmacy_order
        parts.append(make(number, moment, rng))
    return "".join(parts).encode("latin-1")


def measure(content: bytes) -> tuple[int, int, float]:
    """(messages, facts, seconds) for split + parse of a whole batch."""
    default_terminology()  # loading the tables is not ingest time
    began = time.perf_counter()
    messages = facts = 0
    for raw in hl7v2.split("bench.hl7", content):
        outcome = hl7v2.parse(raw)
        messages += 1
        facts += len(outcome.facts)
        if outcome.errors:
            raise SystemExit(f"unexpected errors: {outcome.errors[:3]}")
    return messages, facts, time.perf_counter() - began


def best_rate(parser: str, content: bytes, repeat: int) -> float:
    """Facts per second of the best run with one reader; prints that run."""
    os.environ["VIGIE_HL7_PARSER"] = parser
    measure(build_batch(50))  # warm-up
    runs = [measure(content) for _ in range(max(repeat, 1))]
    messages, facts, seconds = min(runs, key=lambda run: run[2])
    rate = facts / seconds
    print(
        f"hl7v2 ingest ({parser}): {messages} messages, {facts} facts in {seconds:.2f} s: "
        f"{rate:,.0f} facts/s ({messages / seconds:,.0f} messages/s); "
        f"target {TARGET_FACTS_PER_SECOND:,} facts/s, ratio {rate / TARGET_FACTS_PER_SECOND:.2f}"
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    content = build_batch(args.messages)
    rates = {name: best_rate(name, content, args.repeat) for name in HL7_PARSERS}
    lazy, library = rates["lazy"], rates["python-hl7"]
    print(f"lazy / python-hl7: {lazy / library:.2f}x (python-hl7 at {library / lazy:.0%} of lazy)")


if __name__ == "__main__":
    main()
