"""Benchmark: the columnar batch evaluator against a hand-written polars query (issue 9 item 9).

Four rules of the default pack — bio.hyperkalaemia, coag.vka_inr_high, bio.hyponatraemia and
combo.opioid_benzo — are evaluated on the fact frames of a generated hospital (the Parquet
cache of ``bench_batch.py``: ``--beds`` beds, ``--days`` days, seed ``--seed``; generated there
if missing) as of the end of the period, two ways:

* ``columnar``: ``vigie.engine.columnar.detect`` on a selection of the pack holding only those
  four rules (the compiled IR, as the batch runs it; detection only: which rule fires for which
  patient and lines, with its severity);
* ``polars``: one hand-written lazy query per rule, sharing the active lines, written from the
  catalogue (``/work/shared/rule-catalogue.md``): active lines by ATC prefix (the prefixes of
  the pack's sets), the latest result of the concept within the window (start inclusive,
  the evaluation time inclusive, latest by time then fact id), the thresholds (the pack's
  parameters k_max, inr_max, na_min; the escalations 6.0 mmol/L, INR 6, 125 mmol/L), the
  potassium binder exclusion, and opioid x benzodiazepine line pairs.

Both must give the same set of (rule, patient, lines, severity) — checked at the timed
evaluation time and at every 12 h of the period — then the ratio of their median times (the
hand-written query's on polars' default engine and on the in-memory engine, the faster) is
printed against the target (≤ 1.5x). Each measurement is a process of its own (its peak RSS
its own), the cases alternating ``--repeat`` times to cancel machine noise; inside it,
one warm-up run, then ``--runs`` timed runs (their median is the process's figure). The full
``evaluate_columnar`` (detection plus explanation of each alert) is timed too, for reference.

    .venv/bin/python benchmarks/bench_batch_vs_polars.py [--beds 3000] [--days 30] [--seed 1]
        [--repeat 5] [--runs 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from bench_batch import as_of, frames_dir, run_child
from bench_ingest_store import peak_rss_mb

TARGET_RATIO = 1.5
RULES = ("bio.hyperkalaemia", "coag.vka_inr_high", "bio.hyponatraemia", "combo.opioid_benzo")
# The hand-written query on polars' default engine (streaming in polars 2), and on the in-memory
# engine the columnar evaluator collects with: the ratio is taken to the faster of the two.
CASES = ("columnar", "polars", "polars-in-memory", "columnar+explain")

# The ATC prefixes of the pack's sets (rules/packs/default.rules), as the catalogue lists them.
POTASSIUM_RAISING = (
    "A12BA", "B05XA01", "C03DA", "C03DB", "C03EA", "C03EB", "C07DA06", "C09A", "C09B", "C09C",
    "C09D", "C09XA02", "C09XA52", "C09XA53", "C09XA54", "J01EA01", "J01EE01", "L04AD01",
    "L04AD02",
)  # fmt: skip
POTASSIUM_BINDERS = ("V03AE01", "V03AE09", "V03AE10")
VKA = ("B01AA",)
THIAZIDES = (
    "C03AA", "C03BA", "C03EA", "C02LA01", "C07BA", "C07BB", "C07DA", "C07DB", "C08GA02",
    "C09BA", "C09BX01", "C09DA", "C09DX01", "C09DX03", "C09XA52", "C09XA54",
)  # fmt: skip
HYPONATRAEMIA_DRUGS = (*THIAZIDES, "N06AB", "H01BA02", "N03AF01", "N03AF02")
OPIOIDS = ("N02A",)
BENZODIAZEPINES_Z = ("N05BA", "N05CD", "N05CF")


# The hand-written query --------------------------------------------------------------------------


def _in(prefixes: tuple[str, ...]) -> pl.Expr:
    return pl.any_horizontal([pl.col("atc").str.starts_with(p) for p in prefixes]).fill_null(False)


def _active_lines(orders: pl.DataFrame, at: datetime) -> pl.LazyFrame:
    """Lines started by ``at`` and not ended: an end after ``at`` (status active, completed or
    stopped), or no end and status active."""
    ended = pl.col("status").is_in(["active", "completed", "stopped"])
    return (
        orders.lazy()
        .filter(
            (pl.col("start").is_null() | (pl.col("start") <= at))
            & pl.when(pl.col("end").is_not_null())
            .then((pl.col("end") > at) & ended)
            .otherwise(pl.col("status") == "active")
        )
        .select("patient_id", "fact_id", "atc")
    )


def _latest(labs: pl.DataFrame, concept: str, at: datetime, hours: int) -> pl.LazyFrame:
    """Per patient, the latest result of a concept in [at - hours, at] (time, then fact id)."""
    start = at - timedelta(hours=hours)
    return (
        labs.lazy()
        .filter((pl.col("concept") == concept) & pl.col("time").is_between(start, at))
        .sort("patient_id", "time", "fact_id")
        .group_by("patient_id")
        .agg(pl.col("value").last())
    )


def _lab_rule(
    lines: pl.LazyFrame,
    latest: pl.LazyFrame,
    rule_id: str,
    fires: pl.Expr,
    critical: pl.Expr,
) -> pl.LazyFrame:
    return (
        lines.join(latest, on="patient_id")
        .filter(fires)
        .select(
            pl.lit(rule_id).alias("rule_id"),
            "patient_id",
            pl.concat_list("fact_id").alias("fact_ids"),
            pl.when(critical).then(pl.lit("critical")).otherwise(pl.lit("major")).alias("severity"),
        )
    )


def hand_query(
    frames: Mapping[str, pl.DataFrame],
    at: datetime,
    params: Mapping[str, float],
    engine: Any = "auto",
) -> pl.DataFrame:
    """The four rules' alerts as (rule_id, patient_id, fact_ids, severity), collected by
    polars' ``engine`` (its default, or ``in-memory`` as the columnar evaluator collects)."""
    lines = _active_lines(frames["medication_order"], at).collect(engine=engine).lazy()
    labs = frames["lab"]
    value = pl.col("value")
    binders = lines.filter(_in(POTASSIUM_BINDERS)).select("patient_id").unique()
    hyperkalaemia = _lab_rule(
        lines.filter(_in(POTASSIUM_RAISING)).join(binders, on="patient_id", how="anti"),
        _latest(labs, "potassium", at, 48),
        "bio.hyperkalaemia",
        value > params["k_max"],
        value >= 6.0,
    )
    vka_inr = _lab_rule(
        lines.filter(_in(VKA)),
        _latest(labs, "inr", at, 72),
        "coag.vka_inr_high",
        value > params["inr_max"],
        value >= 6.0,
    )
    hyponatraemia = _lab_rule(
        lines.filter(_in(HYPONATRAEMIA_DRUGS)),
        _latest(labs, "sodium", at, 72),
        "bio.hyponatraemia",
        value < params["na_min"],
        value < 125.0,
    )
    opioids = lines.filter(_in(OPIOIDS)).select("patient_id", pl.col("fact_id").alias("o"))
    benzos = lines.filter(_in(BENZODIAZEPINES_Z)).select("patient_id", pl.col("fact_id").alias("b"))
    opioid_benzo = (
        opioids.join(benzos, on="patient_id")
        .filter(pl.col("o") != pl.col("b"))
        .select(
            pl.lit("combo.opioid_benzo").alias("rule_id"),
            "patient_id",
            pl.concat_list("o", "b").alias("fact_ids"),
            pl.lit("moderate").alias("severity"),
        )
    )
    parts = pl.collect_all([hyperkalaemia, vka_inr, hyponatraemia, opioid_benzo], engine=engine)
    return pl.concat(parts)


# In the child ------------------------------------------------------------------------------------


def _selection() -> Any:
    from vigie import rules
    from vigie.engine.load import load_pack

    text = (Path(rules.__file__).parent / "packs" / "default.rules").read_text(encoding="utf-8")
    ir, _ = rules.compile_pack(text, "rules/packs/default.rules")
    assert ir is not None
    pack = load_pack(ir)
    others = [rule.id for rule in pack.rules if rule.id not in RULES]
    selection = pack.select(enabled=RULES, disabled=others)
    assert sorted(rule.id for rule in selection.rules) == sorted(RULES)
    return selection


def _alert_set(frame: pl.DataFrame) -> list[list[Any]]:
    rows = frame.select("rule_id", "patient_id", "fact_ids", "severity").rows()
    return sorted([rule, patient, list(ids), severity] for rule, patient, ids, severity in rows)


def _measure(case: str, folder: Path, days: int, runs: int, found: Path) -> dict[str, Any]:
    from vigie.engine.columnar import detect, explain
    from vigie.store.parquet import read_frames

    selection = _selection()
    frames = read_frames(folder)
    at = as_of(days)

    def once() -> Any:
        if case.startswith("polars"):
            engine = "in-memory" if case == "polars-in-memory" else "auto"
            return hand_query(frames, at, selection.params, engine)
        detected = detect(selection, frames, at)
        if case == "columnar+explain":
            explain(selection, frames, at, detected)
        return detected

    result = once()  # warm-up: first-use costs (set membership caches, thread pool)
    seconds = []
    for _ in range(runs):
        began = time.perf_counter()
        once()
        seconds.append(time.perf_counter() - began)
    if case != "columnar+explain":
        found.write_text(json.dumps(_alert_set(result)), encoding="utf-8")
    return {"seconds": statistics.median(seconds), "all": seconds, "peak": peak_rss_mb()}


def _agree(folder: Path, days: int) -> dict[str, Any]:
    """Both ways at every 12 h of the period (more alerts than at its end alone): how many
    times, alerts and differing times."""
    from vigie.engine.columnar import detect
    from vigie.store.parquet import read_frames

    selection = _selection()
    frames = read_frames(folder)
    end = as_of(days)
    times = [end - timedelta(hours=12 * step) for step in range(2 * days)]
    alerts, differing = 0, []
    for at in times:
        columnar = _alert_set(detect(selection, frames, at))
        hand = _alert_set(hand_query(frames, at, selection.params))
        alerts += len(columnar)
        if columnar != hand:
            differing.append(f"{at:%Y-%m-%dT%H:%M}: {len(columnar)} vs {len(hand)}")
    return {"times": len(times), "alerts": alerts, "differing": differing}


# In the parent -----------------------------------------------------------------------------------


def _child(*arguments: str) -> dict[str, Any]:
    return run_child(__file__, *arguments)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beds", type=int, default=3000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("VIGIE_TIMEZONE", "UTC")
    if args.child and args.child[0] == "agree":
        print(json.dumps(_agree(Path(args.child[1]), int(args.child[2]))))
        return 0
    if args.child:
        case, folder, days, runs, found = args.child
        print(json.dumps(_measure(case, Path(folder), int(days), int(runs), Path(found))))
        return 0
    workdir = args.workdir or Path(tempfile.gettempdir()) / "vigie-bench-batch"
    workdir.mkdir(parents=True, exist_ok=True)
    folder = frames_dir(workdir, args.beds, args.days, args.seed)
    print(
        f"{args.beds:,} beds x {args.days} days, seed {args.seed} ({folder}); as of "
        f"{as_of(args.days):%Y-%m-%dT%H:%M}Z; rules {', '.join(RULES)}; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    agreed = _child("agree", str(folder), str(args.days))
    print(
        f"agreement at every 12 h of the period: {agreed['times']} times, {agreed['alerts']} "
        f"alerts, times differing: {len(agreed['differing'])} {agreed['differing'][:5]}"
    )
    results: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
    found = {case: workdir / f"found-{case}.json" for case in CASES}
    for _ in range(args.repeat):
        for case in CASES:
            arguments = (case, str(folder), str(args.days), str(args.runs), str(found[case]))
            results[case].append(_child(*arguments))
    columnar = json.loads(found["columnar"].read_text(encoding="utf-8"))
    polars = json.loads(found["polars"].read_text(encoding="utf-8"))
    if json.loads(found["polars-in-memory"].read_text(encoding="utf-8")) != polars:
        print("the hand-written query gives other alerts on the in-memory engine")
    by_rule = {rule: sum(1 for row in columnar if row[0] == rule) for rule in RULES}
    print(
        "at the timed evaluation time, same (rule, patient, lines, severity) set: "
        f"{'yes' if columnar == polars else 'NO'} "
        f"({len(columnar)} columnar, {len(polars)} hand-written; columnar by rule {by_rule})"
    )
    if columnar != polars:
        only_c = [row for row in columnar if row not in polars][:5]
        only_p = [row for row in polars if row not in columnar][:5]
        print(f"  only columnar (first 5): {only_c}\n  only hand-written (first 5): {only_p}")
    median = {case: statistics.median(r["seconds"] for r in results[case]) for case in CASES}
    for case in CASES:
        each = ", ".join(f"{r['seconds'] * 1000:.0f}" for r in results[case])
        peak = max(r["peak"] for r in results[case])
        print(
            f"  {case:<17} median {median[case] * 1000:7.1f} ms (per process: {each} ms); "
            f"peak RSS {peak:,.0f} MB"
        )
    peer = min(median["polars"], median["polars-in-memory"])
    ratio = median["columnar"] / peer
    print(
        f"columnar / hand-written polars (the faster engine): {ratio:.2f}x, target <= "
        f"{TARGET_RATIO}x, ratio to target {ratio / TARGET_RATIO:.2f}; to the default engine "
        f"{median['columnar'] / median['polars']:.2f}x, to in-memory "
        f"{median['columnar'] / median['polars-in-memory']:.2f}x; with explanations "
        f"{median['columnar+explain'] / peer:.2f}x; load average after {os.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
