"""The live store's active lines, kept across a new order line instead of recomputed."""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_live import default_pack
from vigie.engine import LiveEvaluator
from vigie.engine.live import _ActiveLines
from vigie.facts import Coding, MedicationOrder, Patient, Source

T0 = datetime(2024, 3, 1)
SRC = Source(feed="test", document="orders.hl7", position="RXE")
DRUGS = ("C09AA05", "C03DA01", "M01AE01", "B01AA03", "N02BE01", "A10BA02", "J01XA01")


def _line(number: int, atc: str, start: int, end: int | None, status: str) -> MedicationOrder:
    return MedicationOrder(
        fact_id=f"O{number}",
        patient_id="p1",
        source=SRC,
        order_id=f"O{number % 5}",  # some lines share an order id (a changed prescription)
        drug=Coding(code=atc),
        atc=atc,
        label=atc,
        route="oral",
        start=T0 + timedelta(hours=start),
        end=None if end is None else T0 + timedelta(hours=start + end),
        status=status,
    )


lines = st.lists(
    st.tuples(
        st.sampled_from(DRUGS),
        st.integers(0, 48),
        st.one_of(st.none(), st.integers(1, 48)),
        st.sampled_from(["active", "active", "completed", "on-hold"]),
        st.integers(0, 60),  # when it arrives, in hours
    ),
    min_size=1,
    max_size=12,
)


def _content(active: _ActiveLines) -> tuple[object, ...]:
    return (
        [id(line) for line in active.lines],
        [(id(line), names) for line, names in active.line_sets],
        active.names,
        active.since,
        active.until,
    )


@settings(max_examples=150, deadline=None)
@given(arrivals=lines)
def test_the_kept_active_lines_are_those_computed_again(
    arrivals: list[tuple[str, int, int | None, str, int]],
) -> None:
    live = LiveEvaluator(default_pack(), now=T0)
    live.add(Patient(fact_id="p1", patient_id="p1", source=SRC), now=T0)
    state = live._patients["p1"]
    checked = 0
    for number, (atc, start, end, status, arrives) in enumerate(arrivals):
        at = T0 + timedelta(hours=arrives)
        live.add(_line(number, atc, start, end, status), now=at)
        kept = state.active
        if kept is None:
            continue  # computed at the next evaluation
        checked += 1
        state.active = None
        again = live._active_lines(state, at)
        assert _content(kept) == _content(again)
    assert checked or len(arrivals) < 2
