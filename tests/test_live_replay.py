"""Replaying a day of a generated hospital through the live store gives the batch's alerts.

The hospital comes from the synthetic generator (``canonical_hospital``: the facts a perfect
connector would read). Its facts are fed one at a time to two ``LiveEvaluator``s (the default
pack and the ANSM interactions pack), the clock ticking every hour through the last day, once
in arrival order and once in a shuffled (seeded) order — where facts arrive late, or dated
later than the clock (read only once it gets there). At the end of the day the live alerts must
be exactly those of ``evaluate(pack, FactSet(all facts), end of day)``: same ids, severities,
messages, evidence, every field but ``as_of``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from vigie.engine import Alert, FactSet, LiveEvaluator, evaluate, load_pack
from vigie.engine.load import LoadedPack
from vigie.facts import AnyFact
from vigie.rules import compile_pack
from vigie.synthetic import DEFAULT_START
from vigie.synthetic.canonical import canonical_hospital
from vigie.synthetic.catalogue import covered_rules

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[1]
BEDS, DAYS, SEED = 60, 4, 11
DAY_START = DEFAULT_START + timedelta(days=1)  # history before it, facts dated after it
DAY_END = DAY_START + timedelta(days=1)
HOURS = [DAY_START + timedelta(hours=h) for h in range(1, 25)]


@cache
def packs() -> tuple[LoadedPack, ...]:
    loaded = []
    for name in ("default.rules", "ansm-interactions.rules"):
        path = REPO / "rules" / "packs" / name
        ir, diagnostics = compile_pack(path.read_text(encoding="utf-8"), str(path))
        assert ir is not None, [str(d) for d in diagnostics]
        loaded.append(load_pack(ir))
    return tuple(loaded)


@cache
def hospital() -> tuple[AnyFact, ...]:
    rates = dict.fromkeys(covered_rules(), 0.02)  # situations of every catalogue rule
    facts, _ = canonical_hospital(BEDS, DAYS, SEED, rates=rates, min_cases=1)
    return tuple(facts)


def arrival(fact: AnyFact) -> datetime:
    """When a feed would bring the fact: when it happened (a patient record: first)."""
    for name in ("time", "start", "admit_time", "onset", "recorded"):
        moment = getattr(fact, name, None)
        if isinstance(moment, datetime):
            return moment
    return datetime.min


def content(alerts: Iterable[Alert]) -> list[dict[str, Any]]:
    return [alert.model_dump(exclude={"as_of"}) for alert in alerts]


def batch_alerts(facts: Iterable[AnyFact], at: datetime) -> list[dict[str, Any]]:
    fact_set = FactSet(list(facts))
    return [row for pack in packs() for row in content(evaluate(pack, fact_set, at))]


def live_alerts(stores: Iterable[LiveEvaluator]) -> list[dict[str, Any]]:
    return [row for live in stores for row in content(live.alerts())]


def stores() -> list[LiveEvaluator]:
    return [LiveEvaluator(pack, now=DAY_START) for pack in packs()]


def test_the_day_covers_alerts_and_facts() -> None:
    """The day is worth replaying: many facts, alerts of both packs at its end."""
    facts = hospital()
    assert len(facts) > 2000
    assert sum(DAY_START <= arrival(f) < DAY_END for f in facts) > 200
    rules = {row["rule_id"] for row in batch_alerts(facts, DAY_END)}
    assert any(rule.startswith("ansm.") for rule in rules), rules
    assert len(rules - {r for r in rules if r.startswith("ansm.")}) >= 5, rules


def test_replay_in_arrival_order_equals_batch() -> None:
    facts = sorted(hospital(), key=lambda f: (arrival(f), f.kind, f.fact_id))
    live = stores()
    seen: list[AnyFact] = []
    position, ticked = 0, 0
    for hour in [DAY_START, *HOURS]:
        while position < len(facts) and arrival(facts[position]) <= hour:
            for store in live:  # history at the start of the day, then each when it happens
                store.add(facts[position], now=max(arrival(facts[position]), DAY_START))
            seen.append(facts[position])
            position += 1
        for store in live:
            changed = store.tick(hour)
            ticked += len(changed.new) + len(changed.resolved)
        if hour.hour % 6 == 0:  # and along the day
            assert live_alerts(live) == batch_alerts(seen, hour), hour
    assert ticked, "time alone changed no alert during the day: the timers went untested"
    for fact in facts[position:]:  # dated after the day: read later than its end
        for store in live:
            store.add(fact, now=DAY_END)
    for store in live:
        store.tick(DAY_END)
    assert live_alerts(live) == batch_alerts(facts, DAY_END)


def test_replay_in_shuffled_order_equals_batch() -> None:
    facts = list(hospital())
    random.Random(SEED).shuffle(facts)
    live = stores()
    chunk = len(facts) // len(HOURS) + 1
    for i, hour in enumerate(HOURS):  # facts late, or dated later than the clock
        for fact in facts[i * chunk : (i + 1) * chunk]:
            for store in live:
                store.add(fact, now=hour)
        for store in live:
            store.tick(hour)
        if hour.hour % 6 == 0:
            seen = facts[: (i + 1) * chunk]
            assert live_alerts(live) == batch_alerts(seen, hour), hour
    assert live_alerts(live) == batch_alerts(facts, DAY_END)
