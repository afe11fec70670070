"""End to end: the default pack finds what the synthetic hospital injected, in every format.

A hospital with every covered rule injected a few times (positives and near-miss controls) is
generated in each format, read back in memory through ``vigie.ingest.read_feed`` and evaluated
with the default pack; every truth row is checked a minute after its window opens, in its
middle and a minute before it closes (``tests/truth_scoring.py``). The same hospital as
canonical facts (what a perfect connector would give) must score exactly the same. Every
positive is found and every control is silent: no failure is excused. The whole hospital is
swept too: every patient is evaluated twice a day, and every alert must be one the truth
expects (a positive, or a background situation the generator explains).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path

import pytest

from tests.truth_scoring import (
    CHECKPOINTS,
    Score,
    TruthRow,
    read_truth_json,
    score,
    sweep,
    sweep_times,
    truth_rows,
)
from vigie.engine import FactSet, LoadedPack, load_pack
from vigie.facts import AnyFact
from vigie.ingest import read_feed
from vigie.rules import compile_pack
from vigie.synthetic import DEFAULT_START, FORMATS, generate
from vigie.synthetic.canonical import canonical_hospital
from vigie.synthetic.catalogue import covered_rules, truth_variants

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[1]
PACK = REPO / "rules" / "packs" / "default.rules"
# Big enough for every variant of every covered rule (positive and control) to occur, small
# enough for generation, parsing and evaluation to take well under 20 s per format.
BEDS, DAYS, SEED = 800, 10, 7
RATES = dict.fromkeys(covered_rules(), 0.006)
MIN_CASES = 1  # every variant at least once, whatever the draw
DATA_END = DEFAULT_START + timedelta(days=DAYS)
SWEEP_EVERY = timedelta(hours=12)


# Fixtures -----------------------------------------------------------------------------------


@dataclass
class Hospital:
    """One reading of the synthetic hospital: its facts, its truth and how it scored."""

    facts: FactSet
    rows: list[TruthRow]
    data_end: datetime
    feed_errors: list[str] = field(default_factory=list)
    _score: Score | None = None

    def score(self) -> Score:
        if self._score is None:
            self._score = score(pack(), self.facts, self.rows, self.data_end, CHECKPOINTS)
        return self._score


@cache
def pack() -> LoadedPack:
    ir, diagnostics = compile_pack(PACK.read_text(encoding="utf-8"), "rules/packs/default.rules")
    assert ir is not None, [str(d) for d in diagnostics]
    return load_pack(ir)


@pytest.fixture(scope="module")
def canonical() -> Hospital:
    facts, truth = canonical_hospital(BEDS, DAYS, SEED, rates=RATES, min_cases=MIN_CASES)
    return Hospital(FactSet(facts), truth_rows(truth), DATA_END)


def _through_format(fmt: str, out: Path) -> Hospital:
    summary = generate(BEDS, DAYS, SEED, fmt, out, rates=RATES, min_cases=MIN_CASES)
    facts: list[AnyFact] = []
    errors: list[str] = []
    for parsed in read_feed(summary.feed_files, fmt):
        if parsed.fatal is not None:
            errors.append(str(parsed.fatal))
        if parsed.outcome is not None:
            facts.extend(parsed.outcome.facts)
            errors.extend(str(error) for error in parsed.outcome.errors)
    rows, data_end = read_truth_json(out / "truth.json")
    return Hospital(FactSet(facts), rows, data_end, errors)


@pytest.fixture(scope="module", params=FORMATS)
def fed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Hospital:
    """The hospital written in one format and read back through ``read_feed``."""
    fmt: str = request.param
    return _through_format(fmt, tmp_path_factory.mktemp(fmt))


# Tests --------------------------------------------------------------------------------------


def test_truth_covers_every_variant_of_every_covered_rule(canonical: Hospital) -> None:
    seen = {(row.rule_id, row.variant, row.expected) for row in canonical.rows}
    wanted = set(truth_variants())
    assert wanted - seen == set()
    assert {row.rule_id for row in canonical.rows if row.positive} == set(covered_rules())
    assert {row.rule_id for row in canonical.rows if not row.positive} == set(covered_rules())
    assert set(covered_rules()) <= {rule.id for rule in pack().rules}


def test_truth_names_the_alerted_lines_apart_from_the_context(canonical: Hospital) -> None:
    """Only infect.iv_to_oral has a context line: the oral line that makes "takes other drugs
    by mouth" true, which the rule binds to nothing and its alert does not name."""
    for row in canonical.rows:
        assert row.order_ids, row.describe()
        assert not set(row.order_ids) & set(row.context_order_ids), row.describe()
        assert len(row.context_order_ids) == (row.rule_id == "infect.iv_to_oral"), row.describe()


def test_every_window_opens_within_the_data(canonical: Hospital) -> None:
    """A window opening after the data ends would check nothing the data shows."""
    late = [row.describe() for row in canonical.rows if row.window_start >= DATA_END]
    assert late == [], "\n".join(late[:10])


def test_feed_reads_without_errors(fed: Hospital) -> None:
    assert fed.feed_errors == [], fed.feed_errors[:5]
    assert fed.data_end == DATA_END


def _assert_truth_met(hospital: Hospital) -> None:
    result = hospital.score()
    assert result.failures == [], "\n" + result.report()
    assert all(v.ok for v in result.verdicts)


def test_default_pack_finds_the_truth_in_canonical_facts(canonical: Hospital) -> None:
    _assert_truth_met(canonical)


def test_default_pack_finds_the_truth_through_the_feed(fed: Hospital) -> None:
    _assert_truth_met(fed)


def test_every_alert_of_the_hospital_is_explained(canonical: Hospital) -> None:
    """No alert outside the truth: each one is an injected positive or a background situation
    the generator wrote down with its reason (not found by running the engine)."""
    result = sweep(
        pack(), canonical.facts, canonical.rows, sweep_times(DEFAULT_START, DATA_END, SWEEP_EVERY)
    )
    assert result.evaluations > 0 and result.alerts, "the sweep saw no alert at all"
    assert result.unexplained == [], "\n" + result.report()


# The look-backs the truth guards: for each, a positive whose result is then left alone, and a
# control once it is older than the catalogue's window (catalogue.Scenario.lapse). The phrase is
# the pack's wording of the look-back, found once in the rule.
GUARDED_LOOK_BACKS = (
    ("renal.metformin_egfr", "metformin_egfr_window = 7 d"),  # the cursor's default
    ("renal.dabigatran", "clearance within 7 d"),
    ("renal.xaban", "clearance within 7 d"),
    ("renal.lmwh_curative", "clearance within 7 d"),
    ("renal.gabapentinoid", "clearance within 7 d"),
    ("dose.colchicine_max", "clearance within 7 d"),
    ("elderly.nsaid_renal", "clearance within 7 d"),
    ("renal.nephrotoxic_aki", "latest creatinine within 48 h"),
    ("bio.hyperkalaemia", "latest potassium within 48 h"),
    ("bio.hypokalaemia_qt", "latest potassium within 48 h"),
    ("bio.digoxin", "latest potassium within 48 h"),
    ("bio.digoxin", "latest digoxin within 7 d"),
    ("bio.hyponatraemia", "latest sodium within 72 h"),
    ("bio.hypoglycaemia", "min glucose within 24 h"),
    ("bio.heparin_platelets", "latest platelets within 72 h"),
    ("bio.clozapine_neutrophils", "min neutrophils within 7 d"),
    ("bio.statin_ck", "latest ck within 7 d"),
    ("bio.hepatotoxic_alt", "max alt within 72 h"),
    ("coag.vka_inr_high", "latest inr within 72 h"),
    ("coag.vka_relay", "latest inr within 72 h"),
)


def widened(source: str, rule_id: str, phrase: str, to: str = "30 d") -> str:
    """The pack with ``phrase`` of rule ``rule_id`` (or of a cursor's declaration, ``name =
    7 d``) reading ``<to>`` as its duration instead."""
    if " = " in phrase:
        start = source.index(f"\nparam {phrase}")
    else:
        start = source.index(f"\nrule {rule_id} ")
    end = source.find("\nrule " if " = " not in phrase else "\n", start + 1)
    end = len(source) if end < 0 else end
    block = source[start:end]
    assert block.count(phrase) == 1, f"{PACK.name}: rule {rule_id} does not say {phrase!r} once"
    wide = re.sub(r"\S+ \S+$", to, phrase)
    return source[:start] + block.replace(phrase, wide) + source[end:]


@pytest.mark.parametrize(("rule_id", "phrase"), GUARDED_LOOK_BACKS)
def test_a_look_back_wider_than_the_catalogues_fails_the_truth(
    canonical: Hospital, rule_id: str, phrase: str
) -> None:
    """The truth's windows come from the catalogue, not from the pack: a pack reading a result
    of 30 days where the catalogue says 48 h fires on the controls past the catalogue's window."""
    source = widened(PACK.read_text(encoding="utf-8"), rule_id, phrase)
    ir, diagnostics = compile_pack(source, "default.rules (widened)")
    assert ir is not None, [str(d) for d in diagnostics]
    rows = [row for row in canonical.rows if row.rule_id == rule_id]
    result = score(load_pack(ir), canonical.facts, rows, DATA_END, CHECKPOINTS)
    failing = {v.row.variant for v in result.failures}
    assert failing, f"{rule_id}: '{phrase}' read as 'within 30 d' went unnoticed"
    assert all(variant.endswith("_past_lookback") for variant in failing), failing


def test_the_batch_evaluator_scores_exactly_like_the_live_one(canonical: Hospital) -> None:
    """The columnar batch evaluator, run on all the patients due at each row's middle time at
    once, finds every positive, keeps every control silent, and gives the same alerts per row
    as the per-patient evaluator (which is also checked at the window edges; the property
    tests of tests/test_columnar.py hold the two together there)."""
    batch = score(pack(), canonical.facts, canonical.rows, canonical.data_end, columnar=True)
    assert batch.failures == [], "\n" + batch.table()
    middle = {k: v for k, v in canonical.score().outcomes().items() if k[1] == "middle"}
    assert batch.outcomes() == middle


def test_feed_scores_exactly_like_canonical_facts(fed: Hospital, canonical: Hospital) -> None:
    assert sorted(fed.rows, key=repr) == sorted(canonical.rows, key=repr)
    want, got = canonical.score().outcomes(), fed.score().outcomes()
    assert want.keys() == got.keys()
    differing = [
        f"{row.describe()} at {point}: canonical {alerts}, feed {got[row, point]}"
        for (row, point), alerts in want.items()
        if alerts != got[row, point]
    ]
    assert differing == [], "\n".join(differing[:20])
