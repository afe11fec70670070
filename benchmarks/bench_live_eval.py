"""Live store throughput and latency on a generated hospital, default + ANSM packs loaded.

A synthetic hospital (``vigie.synthetic.canonical.canonical_hospital``: every catalogue situation
injected) is replayed fact by fact, in arrival order, into two ``LiveEvaluator``s — the default
pack and the ANSM interactions pack, as ``vigie batch`` loads them — the clock ticking every
hour of the replayed period. Each fact is timed from arrival to updated alerts (``add`` on both
stores, which returns the diff of the worklist). An update is *firing* when a rule it
re-evaluates fires (``LiveEvaluator.fired``: an alert found, new or found again); the others
are *non-firing*. Printed: facts/s sustained (adds and ticks, wall clock), median and
p99 per fact for both kinds, the time of a tick over the whole hospital with nothing due and with
an hour of deadlines due, and peak RSS, each against its target (issue 9 item 9).

The live store explains an alert when it is read (issue 9 item 8: "explains an alert lazily or
cheaply"), so the replay is run twice: as a worklist kept current (the diffs are not read), then
with every diff read as soon as it is returned (``diff.new``, ``updated``, ``resolved``: each
alert found is explained, as the service's live worklist does before writing), timed together.
The first replay is run ``--rounds`` times (the first in detail, the others on one line each),
fresh stores each time: on these shared machines its firing median varies by about ±15 % from
one run to the next, more than most changes measured against it.

Then, for comparison with earlier figures, one realistic inpatient (a dozen active lines, a
week of labs) receiving potassium results, normal then high (the hyperkalaemia alert re-explained
on each add).

    .venv/bin/python benchmarks/bench_live_eval.py [--beds 300] [--days 7] [--seed 3] [--rounds 3]
        [--closures] [--opcodes] [--no-gc-freeze]

``--closures`` loads the packs as the closure builder's closures instead of generated Python
(``load_pack(ir, codegen=False)``), for comparison (run both in turn: the machine is shared).

What the process loads before the replay (packs, hospital) is frozen out of the garbage
collector's generations (``gc.freeze()``), as ``vigie serve`` does after start-up: otherwise
each full collection walks it (over 100 ms, once every few thousand updates: the maximum of the
non-firing updates). ``--no-gc-freeze`` leaves it in.

``--opcodes`` counts instead of timing: the Python bytecode instructions and calls each update
executes (``sys.settrace`` with opcode events), for the firing updates and every tenth
non-firing one, by kind of fact. The count does not depend on the machine's load, so it tells
apart two versions of the code whose timings differ by less than the noise (it says nothing of
the memory each update touches, which the wall clock does).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from vigie.engine import LiveEvaluator, load_pack
from vigie.engine.load import LoadedPack
from vigie.facts import AnyFact, Coding, LabResult, MedicationOrder, Observation, Patient, Sex
from vigie.facts import Source as FactSource
from vigie.rules import compile_pack
from vigie.synthetic import DEFAULT_START
from vigie.synthetic.canonical import canonical_hospital
from vigie.synthetic.catalogue import covered_rules

REPO = Path(__file__).parents[1]
TARGET_RATE = 2000.0  # facts/s sustained
TARGET_P99 = 1e-3  # s per fact, arrival to updated alerts
TARGET_MEDIAN_QUIET = 25e-6  # s, non-firing update
TARGET_MEDIAN_FIRING = 50e-6  # s, firing update
SOURCE = FactSource(feed="hl7v2", document="bench.hl7", position="OBX[1]-5")


def pack_file(name: str, codegen: bool = True) -> LoadedPack:
    path = REPO / "rules" / "packs" / name
    ir, _ = compile_pack(path.read_text(encoding="utf-8"), str(path))
    assert ir is not None, f"{path} does not compile"
    return load_pack(ir, codegen=codegen)


def arrival(fact: AnyFact) -> datetime:
    """When a feed would bring the fact: when it happened (a patient record: first)."""
    for name in ("time", "start", "admit_time", "onset", "recorded"):
        moment = getattr(fact, name, None)
        if isinstance(moment, datetime):
            return moment
    return datetime.min


def quantile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def ratio_line(label: str, value: float, target: float, unit: str, scale: float) -> str:
    return (
        f"  {label}: {value * scale:.1f} {unit} — target {target * scale:g} {unit}, "
        f"{value / target:.2f}× the target"
    )


def replay(
    packs: Sequence[LoadedPack],
    facts: list[AnyFact],
    start: datetime,
    read: bool = False,
    brief: str | None = None,
) -> None:
    """Feed the hospital in arrival order with hourly ticks; print the figures (``read``: each
    diff read, its alerts explained, within the timed update; ``brief``: the main figures on
    one line headed so, for another round of the same replay)."""
    facts.sort(key=lambda f: (arrival(f), f.kind, f.fact_id))
    stores = [LiveEvaluator(pack, now=start) for pack in packs]
    quiet: list[tuple[float, float]] = []  # (wall, CPU) seconds
    firing: list[tuple[float, float]] = []
    ticks: list[float] = []
    clock, cpu = time.perf_counter, time.thread_time
    alerts_built = 0
    by_kind: dict[str, list[tuple[float, int, int]]] = {}  # firing updates: (wall, rules, alerts)
    by_rules: dict[tuple[bool, int], list[float]] = {}  # (firing, rules re-evaluated): wall
    next_tick = start + timedelta(hours=1)
    began = clock()
    for fact in facts:
        at = max(arrival(fact), start)
        while at >= next_tick:  # the hour went by: time-based rules first
            tick_began = clock()
            for live in stores:
                live.tick(next_tick)
            ticks.append(clock() - tick_began)
            next_tick += timedelta(hours=1)
        fired = sum(live.fired for live in stores)
        evaluations = sum(live.evaluations for live in stores)
        c0 = cpu()  # a system call: outside the wall-clock window
        t0 = clock()
        if read:
            for live in stores:
                diff = live.add(fact, now=at)
                diff.new, diff.updated, diff.resolved  # noqa: B018  # read: explained
            del diff
        else:
            for live in stores:
                live.add(fact, now=at)  # the diff not held: explained by nobody
        t1 = clock()
        spent = (t1 - t0, cpu() - c0)
        built = sum(live.fired for live in stores) - fired
        (firing if built else quiet).append(spent)
        alerts_built += built
        evaluated = sum(live.evaluations for live in stores) - evaluations
        by_rules.setdefault((bool(built), min(evaluated, 3)), []).append(spent[0])
        if built:
            by_kind.setdefault(_update_kind(fact), []).append((spent[0], evaluated, built))
    wall = clock() - began
    classify = sum(w for w, _ in quiet) + sum(w for w, _ in firing) + sum(ticks)
    rate = len(facts) / classify
    patients = len({f.patient_id for f in facts})
    explained = sum(live.explained for live in stores)
    if brief is not None:
        fw, qw = [w for w, _ in firing], [w for w, _ in quiet]
        print(
            f"  {brief}: firing median {statistics.median(fw) * 1e6:.1f} µs "
            f"({statistics.median(fw) / TARGET_MEDIAN_FIRING:.2f}×), p99 "
            f"{quantile(fw, 0.99) * 1e6:.0f} µs; non-firing median "
            f"{statistics.median(qw) * 1e6:.1f} µs, p99 {quantile(qw, 0.99) * 1e6:.0f} µs; "
            f"{rate:,.0f} facts/s"
        )
        return
    if read:
        print(
            f"the same replay, every diff read at once ({explained} alerts explained within "
            f"the updates):"
        )
    print(
        f"hospital: {len(facts)} facts, {patients} patients, "
        f"{sum(len(live.alerts()) for live in stores)} open alerts at the end; "
        f"{len(ticks)} hourly ticks"
    )
    print(
        f"  sustained: {rate:,.0f} facts/s (adds + ticks; replay wall clock with the "
        f"benchmark's own bookkeeping {len(facts) / wall:,.0f} facts/s) — target "
        f"{TARGET_RATE:,.0f}, {rate / TARGET_RATE:.2f}× the target"
    )
    for label, samples, target in (
        ("non-firing", quiet, TARGET_MEDIAN_QUIET),
        ("firing", firing, TARGET_MEDIAN_FIRING),
    ):
        walls, cpus = [w for w, _ in samples], [c for _, c in samples]
        each = f", {alerts_built / len(firing):.1f} alerts found each" if samples is firing else ""
        print(f"  {label} updates ({len(samples)}{each}), wall clock:")
        print(ratio_line("median", statistics.median(walls), target, "µs", 1e6))
        print(ratio_line("p99", quantile(walls, 0.99), TARGET_P99, "µs", 1e6))
        print(
            f"    max {max(walls) * 1e6:.0f} µs; CPU time of the process (what preemption by "
            f"other processes leaves out): median {statistics.median(cpus) * 1e6:.1f} µs, "
            f"p99 {quantile(cpus, 0.99) * 1e6:.0f} µs"
        )
    if read:
        return
    print(f"  alerts explained during the replay: {explained} (none read)")
    firing_breakdown(by_kind)
    like_for_like(by_rules)
    tick_costs(stores, facts)


def opcode_counts(packs: Sequence[LoadedPack], facts: list[AnyFact], start: datetime) -> None:
    """Replay once to find the firing updates, then again counting the opcodes and Python
    calls of those and of every tenth non-firing update (``--opcodes``)."""
    facts.sort(key=lambda f: (arrival(f), f.kind, f.fact_id))

    def run(counted: set[int] | None) -> tuple[set[int], dict[str, list[tuple[int, int]]]]:
        stores = [LiveEvaluator(pack, now=start) for pack in packs]
        firing: set[int] = set()
        counts: dict[str, list[tuple[int, int]]] = {}
        next_tick = start + timedelta(hours=1)
        for i, fact in enumerate(facts):
            at = max(arrival(fact), start)
            while at >= next_tick:
                for live in stores:
                    live.tick(next_tick)
                next_tick += timedelta(hours=1)
            fired = sum(live.fired for live in stores)
            counting = counted is not None and (i in counted or i % 10 == 0)
            if counting:
                tally[:] = [0, 0]
                sys.settrace(_trace_call)
            for live in stores:
                live.add(fact, now=at)
            if counting:
                sys.settrace(None)
                label = _update_kind(fact) if counted and i in counted else "non-firing"
                counts.setdefault(label, []).append((tally[0], tally[1]))
            if sum(live.fired for live in stores) > fired:
                firing.add(i)
        return firing, counts

    firing, _ = run(None)
    _, counts = run(firing)
    fired = [c for label, rows in counts.items() if label != "non-firing" for c in rows]
    quiet = counts.get("non-firing", [])
    print("Python opcodes and calls per update (deterministic; both packs):")
    for label, rows in (("firing", fired), ("non-firing (every tenth)", quiet)):
        print(
            f"  {label} ({len(rows)}): opcodes median {statistics.median(r[0] for r in rows):.0f},"
            f" mean {statistics.mean(r[0] for r in rows):.0f}; calls mean "
            f"{statistics.mean(r[1] for r in rows):.1f}"
        )
    ranked = sorted(
        ((k, v) for k, v in counts.items() if k != "non-firing"), key=lambda kv: -len(kv[1])
    )
    for kind, rows in ranked[:5]:
        opcodes, calls = (statistics.mean(r[i] for r in rows) for i in (0, 1))
        print(f"    firing, {kind} ({len(rows)}): opcodes mean {opcodes:.0f}, calls {calls:.1f}")


tally = [0, 0]  # opcodes, Python calls of the update being counted


def _trace_call(frame: Any, event: str, arg: Any) -> Any:
    if event == "call":
        tally[1] += 1
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return _trace_opcode
    return None


def _trace_opcode(frame: Any, event: str, arg: Any) -> Any:
    if event == "opcode":
        tally[0] += 1
    return _trace_opcode


def _update_kind(fact: AnyFact) -> str:
    concept = getattr(fact, "concept", None)
    return f"{fact.kind} {concept}" if concept else fact.kind


def firing_breakdown(by_kind: dict[str, list[tuple[float, int, int]]]) -> None:
    """Where firing updates spend: per kind of fact, how many rules one update re-evaluates
    (both packs) and how many alerts it builds (new or re-explained), and its median."""
    print("  firing updates by fact, wall clock (rules re-evaluated and alerts built per update):")
    ranked = sorted(by_kind.items(), key=lambda item: (-len(item[1]), item[0]))
    shown, rest = ranked[:6], [row for _, rows in ranked[6:] for row in rows]
    if rest:
        shown.append(("others", rest))
    for kind, rows in shown:
        median = statistics.median(r[0] for r in rows)
        print(
            f"    {kind}: {len(rows)}, median {median * 1e6:.0f} µs, "
            f"{statistics.mean(r[1] for r in rows):.1f} rules, "
            f"{statistics.mean(r[2] for r in rows):.1f} alerts"
        )


def like_for_like(by_rules: dict[tuple[bool, int], list[float]]) -> None:
    """Firing against non-firing updates that re-evaluate as many rules: what building the
    alerts (evaluated traced, explained, diffed) adds to the evaluation itself."""
    print("  updates by rules re-evaluated (both packs), median wall clock:")
    for rules in (0, 1, 2, 3):
        cells = []
        for firing in (False, True):
            samples = by_rules.get((firing, rules), [])
            label = "firing" if firing else "non-firing"
            median = f"{statistics.median(samples) * 1e6:.0f} µs" if samples else "-"
            cells.append(f"{label} {median} ({len(samples)})")
        print(f"    {rules if rules < 3 else '3 or more'} rules: {', '.join(cells)}")


def tick_costs(stores: Sequence[LiveEvaluator], facts: Sequence[AnyFact]) -> None:
    """A tick with nothing due, then one with the next hour of deadlines due."""
    now = max(live.now for live in stores if live.now is not None)
    clock = time.perf_counter
    samples = []
    for _ in range(20):
        began = clock()
        for live in stores:
            live.tick(now)
        samples.append(clock() - began)
    quiet = statistics.median(samples)
    due = [d for live in stores if (d := live.next_deadline()) is not None]
    moment = max(now, min(due)) + timedelta(hours=1) if due else now + timedelta(hours=1)
    queued = sum(live.queued() for live in stores)
    began = clock()
    changed = [live.tick(moment) for live in stores]
    busy = clock() - began
    popped = queued - sum(live.queued() for live in stores)
    patients = len({f.patient_id for f in facts})
    print(
        f"  tick over {patients} patients: nothing due {quiet * 1e6:.1f} µs; "
        f"one hour of deadlines due {busy * 1e3:.2f} ms ({popped} of {queued} queue entries "
        f"due, {sum(len(c.new) + len(c.updated) + len(c.resolved) for c in changed)} alert "
        f"changes)"
    )


# One inpatient, potassium results -----------------------------------------------------------

START = datetime(2025, 1, 6, 8, 0)
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
        for concept, lab_unit, lab_value in LABS:
            facts.append(lab(f"L{half_day}-{concept}", concept, lab_unit, lab_value,
                             START + timedelta(hours=12 * half_day)))  # fmt: skip
    return facts


def lab(fid: str, name: str, unit: str | None, value: float, moment: datetime) -> LabResult:
    return LabResult(
        fact_id=fid, patient_id="P1", source=SOURCE, concept=name, code=Coding(code=name),
        value=value, unit=unit, time=moment,
    )  # fmt: skip


def time_adds(
    packs: Sequence[LoadedPack],
    adds: int,
    value: float,
    concept: str = "potassium",
    read: bool = False,
) -> float:
    """Median seconds of one lab result added to every pack's store (``read``: its diff read,
    the alert explained)."""
    stores = [LiveEvaluator(pack, now=START) for pack in packs]
    for fact in patient_facts():
        for live in stores:
            live.add(fact)
    end = START + timedelta(days=7)
    results = [
        lab(f"K{i}", concept, "mmol/L", value, end + timedelta(minutes=i)) for i in range(adds)
    ]
    samples = []
    clock = time.perf_counter
    for fact in results:
        began = clock()
        for live in stores:
            diff = live.add(fact)
            if read:
                diff.new, diff.updated, diff.resolved  # noqa: B018  # read: explained
        samples.append(clock() - began)
    return statistics.median(samples)


def one_patient(packs: Sequence[LoadedPack], adds: int, repeat: int) -> None:
    normal = min(time_adds(packs, adds, 4.4) for _ in range(repeat))
    high = min(time_adds(packs, adds, 5.9) for _ in range(repeat))
    print(f"one inpatient ({len(LINES)} active lines, 7 days of labs), both packs, a potassium:")
    print(ratio_line("normal (non-firing), median", normal, TARGET_MEDIAN_QUIET, "µs", 1e6))
    print(ratio_line("high (firing), median", high, TARGET_MEDIAN_FIRING, "µs", 1e6))
    read = min(time_adds(packs, adds, 5.9, read=True) for _ in range(repeat))
    print(f"  high, the diff read at once (the alert explained): median {read * 1e6:.1f} µs")
    unread = min(time_adds(packs, adds, 0.02, "troponin") for _ in range(repeat))
    print(f"  a result no rule reads (troponin), the fixed cost: median {unread * 1e6:.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beds", type=int, default=300)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--adds", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--rounds", type=int, default=3, help="replays of the hospital (the first in detail)"
    )
    parser.add_argument("--closures", action="store_true", help="packs as closures, no codegen")
    parser.add_argument(
        "--opcodes", action="store_true", help="count Python opcodes per update, no timing"
    )
    parser.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="leave the packs and the hospital in the garbage collector's generations "
        "(vigie serve freezes what it loads at start-up)",
    )
    args = parser.parse_args()
    codegen = not args.closures
    packs = [pack_file(name, codegen) for name in ("default.rules", "ansm-interactions.rules")]
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, load average {load:.1f} (p99 wall suffers above 1)")
    print(
        f"packs: default ({len(packs[0].rules)} rules) + ANSM ({len(packs[1].rules)} rules), "
        f"{'generated Python' if codegen else 'closures'}; "
        f"hospital of {args.beds} beds over {args.days} days (seed {args.seed})"
    )
    rates = dict.fromkeys(covered_rules(), 0.02)
    facts, _ = canonical_hospital(args.beds, args.days, args.seed, rates=rates, min_cases=1)
    if not args.no_gc_freeze:  # as ``vigie serve`` does once started (api/cli.py, _freeze)
        gc.collect()
        gc.freeze()
    print(
        "garbage collector: "
        + ("packs and hospital left in its generations" if args.no_gc_freeze else
           f"{gc.get_freeze_count():,} objects loaded before the replay frozen, as vigie serve "
           "does after start-up")
    )  # fmt: skip
    if args.opcodes:
        opcode_counts(packs, facts, DEFAULT_START)
        return
    replay(packs, facts, DEFAULT_START)
    if args.rounds > 1:
        print(f"the same replay again ({args.rounds - 1} more rounds: how much the figures vary):")
    for round_ in range(2, args.rounds + 1):
        replay(packs, facts, DEFAULT_START, brief=f"round {round_}")
    replay(packs, facts, DEFAULT_START, read=True)
    one_patient(packs, args.adds, args.repeat)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MB (whole process: packs, hospital, stores)")


if __name__ == "__main__":
    main()
