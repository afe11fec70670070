"""How well the drug-name fallback maps codes no table was built from (issue 8 item 3).

Two measures, printed as rates with every disagreement listed:

1. hold-out: the name fallback alone (``Terminology.drug_by_name``, the code tables left out)
   on every RxNorm coding of the reference FHIR (shared/data/fhir: synthea-r4 bundles and
   synthea-bulk-10 NDJSON), compared with ``terminology/drugs_rxnorm.csv``, the reviewed
   code table. The name tables are built from the BDPM and hand-written aliases, never from
   those codes: agreement is counted per distinct code and per coding met (weighted by use).
2. unseen: ``vigie quality`` on tests/data/fhir/synthea-unseen-rxnorm.json, Synthea-shaped
   orders whose RxNorm codes are not in drugs_rxnorm.csv: the lines mapped by code, by name,
   and unmapped, with the fallback rate.
3. reference feeds: the drug lines of every shared feed (FHIR, HL7 v2, PN13) by where their ATC
   came from, and the codes mapped by name (NDC, ANSM SMS, local codes no table holds), to be
   checked by hand against the WHO ATC index.

Run: ``.venv/bin/python benchmarks/bench_drug_names.py``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from vigie import settings
from vigie.connectors.base import RawMessage
from vigie.connectors.fhir import connector as fhir
from vigie.engine.quality import QualityReport, QualityTally, quality_report, render_text
from vigie.ingest.pipeline import read_feed
from vigie.terminology import default_terminology
from vigie.terminology.units import read_rows

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
DATA: Path = settings.value("shared_data")
UNSEEN = Path(__file__).parents[1] / "tests" / "data" / "fhir" / "synthea-unseen-rxnorm.json"


def _resources(fhir_dir: Path) -> Iterator[dict[str, object]]:
    for path in sorted((fhir_dir / "synthea-r4").glob("*.json")):
        if path.name != "MANIFEST.json":
            yield from (e["resource"] for e in json.loads(path.read_text())["entry"])
    for path in sorted((fhir_dir / "synthea-bulk-10").glob("*.ndjson")):
        yield from (json.loads(line) for line in path.read_text().splitlines() if line.strip())


def _codings(node: object) -> Iterator[dict[str, str]]:
    if isinstance(node, dict):
        if node.get("system") == RXNORM and "code" in node:
            yield node
        for value in node.values():
            yield from _codings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _codings(value)


def reference_codings(fhir_dir: Path) -> Counter[tuple[str, str]]:
    """(code, display) of every RxNorm coding in the reference FHIR, with how often it is met."""
    return Counter(
        (c["code"], c.get("display") or "") for r in _resources(fhir_dir) for c in _codings(r)
    )


def hold_out(fhir_dir: Path) -> dict[str, object]:
    """The fallback alone against the reviewed table, on the codes that table gives an ATC."""
    reviewed = {
        r["code"]: r["atc"] for r in read_rows("drugs_rxnorm.csv") if r["system"] == "RXNORM"
    }
    terminology = default_terminology()
    agree = disagree = unanswered = 0
    weighted: Counter[str] = Counter()
    rows: list[tuple[str, str, str, str | None]] = []
    for (code, display), uses in sorted(reference_codings(fhir_dir).items()):
        expected = reviewed.get(code)
        if not expected:  # not in the table, or a known code without ATC (vaccine, device)
            continue
        match = terminology.drug_by_name(display)
        got = match.atc if match else None
        outcome = "agree" if got == expected else ("none" if got is None else "disagree")
        weighted[outcome] += uses
        if outcome == "agree":
            agree += 1
        else:
            disagree += outcome == "disagree"
            unanswered += outcome == "none"
            rows.append((code, display, expected, got))
    total = agree + disagree + unanswered
    return {
        "codes": total,
        "agree": agree,
        "disagree": disagree,
        "no_answer": unanswered,
        "agreement_rate": agree / total,
        "precision": agree / (agree + disagree),
        "codings_met": sum(weighted.values()),
        "weighted_agreement_rate": weighted["agree"] / sum(weighted.values()),
        "misses": rows,
    }


def unseen_report() -> str:
    raw = RawMessage("fhir", UNSEEN.name, UNSEEN.read_bytes(), UNSEEN.name)
    return render_text(quality_report(fhir.parse(raw).facts))


def reference_feeds() -> QualityReport:
    tally = QualityTally(limit=100)
    folders = ("fhir", "fr-medication-ig/fhir_bundles", "fr-medication-ig/pn13_xml", "hl7v2")
    for parsed in read_feed([DATA / folder for folder in folders]):
        if parsed.outcome is not None:
            tally.add_facts(parsed.outcome.facts)
    return tally.report()


def main() -> None:
    result = hold_out(DATA / "fhir")
    print("1. Hold-out: name fallback alone vs terminology/drugs_rxnorm.csv (reference FHIR)")
    print(
        f"   distinct (code, display) pairs the table gives an ATC: {result['codes']}; "
        f"agree {result['agree']}, disagree {result['disagree']}, no answer {result['no_answer']}"
    )
    print(
        f"   agreement {result['agreement_rate']:.1%}; precision when answering "
        f"{result['precision']:.1%}; weighted by the {result['codings_met']} codings met: "
        f"{result['weighted_agreement_rate']:.1%}"
    )
    for code, display, expected, got in result["misses"]:  # type: ignore[attr-defined]
        print(f"   {code:>8}  table {expected}  name {got or '-':8}  {display}")
    print("\n2. vigie quality on tests/data/fhir/synthea-unseen-rxnorm.json")
    print("\n".join("   " + line for line in unseen_report().splitlines()))
    report = reference_feeds()
    print("\n3. Reference feeds (shared/data): drug lines by feed, and the codes mapped by name")
    for row in report.drug_mapping:
        print(
            f"   {row['feed']:7} {row['kind']}: {row['lines']} lines, by code {row['by_code']}, "
            f"by name {row['by_name']}, none {row['unmapped']} ({row['name_rate']:.1%} by name)"
        )
    for row in report.mapped_by_name:
        print(
            f"   {row['atc']}  {row['count']:>3}  {row['system']}|{row['code']}  {row['display']}"
        )


if __name__ == "__main__":
    main()
