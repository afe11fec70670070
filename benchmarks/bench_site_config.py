"""How long applying a new site configuration holds the live worklist, and what an ingest waits.

``PUT /config/cursors`` applies the saved version before it answers (``LiveWorklist.configure``:
the evaluators of unchanged settings are kept, the others loaded again from the store's facts
without holding the worklist, then swapped in under its lock with every patient evaluated and
the worklist reconciled). An ingest's facts reach the worklist while the new evaluators load;
they wait only for the swap. A generated hospital (CSV feeds, default + ANSM packs, cases of
every covered rule at rate 0.3) is ingested into a SQLite file and a fresh PostgreSQL schema; a
live worklist is started on it, then three versions are applied in turn:

- ``one ward cursor``: ``k_max`` moved in the ward with the most patients (one new evaluator);
- ``a rule off``: the rule with the most open alerts turned off hospital-wide (every
  evaluator of its pack new);
- ``defaults``: no configuration (the packs' defaults: the first evaluators again, new).

During each, another thread hands the worklist a potassium result (``LiveWorklist.apply``) and
times how long it waits. Printed per store and size: the start, each application's duration,
the ingest's wait, alerts opened and resolved, and the process's peak RSS. There is no target in
the issue for this; the figures say how long a configuration change stalls live alerts.

    .venv/bin/python benchmarks/bench_site_config.py [--beds 300,1000] [--days 4] [--no-postgres]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench_ingest_store import postgres_schema

from vigie.api.live import LiveWorklist
from vigie.engine.load import LoadedPack
from vigie.engine.site_config import SiteConfig, parse_site_config
from vigie.facts import Coding, LabResult, Source, Stay
from vigie.ingest import ingest
from vigie.store import FactStore


def _versions(ward: str, rule: str, packs: list[LoadedPack]) -> list[tuple[str, SiteConfig | None]]:
    cursor = f'[wards."{ward}".cursors]\nk_max = 6.0\n'
    rule_off = f'[hospital]\ndisable = ["{rule}"]\n{cursor}'
    return [
        ("one ward cursor", parse_site_config(cursor, "one ward cursor", packs)),
        (f"{rule} off", parse_site_config(rule_off, "a rule off", packs)),
        ("defaults", None),
    ]


def _potassium(patient_id: str, at: datetime, n: int) -> LabResult:
    return LabResult(
        fact_id=f"bench-k-{n}",
        patient_id=patient_id,
        source=Source(feed="hl7v2", document="bench", position="OBX[1]"),
        concept="potassium",
        code=Coding(code="2823-3"),
        value=6.3,
        unit="mmol/L",
        time=at,
    )


def _apply_timed(live: LiveWorklist, fact: LabResult, waited: list[float]) -> None:
    began = time.perf_counter()
    live.apply([fact])
    waited.append(time.perf_counter() - began)


def bench_store(label: str, url: str, feeds: list[Path], as_of: datetime) -> None:
    with FactStore(url) as store:
        began = time.perf_counter()
        ingest(feeds, store, "csv")
        loaded = time.perf_counter() - began
        live = LiveWorklist(store, as_of=as_of, clock=lambda: as_of)
        began = time.perf_counter()
        live.start()
        started = time.perf_counter() - began
        stays = [f for f in store.iter_facts(["stay"]) if isinstance(f, Stay)]
        wards = Counter(stay.ward for stay in stays if stay.ward)
        ward = wards.most_common(1)[0][0]
        patient = next(stay.patient_id for stay in stays if stay.ward == ward)
        rules = Counter(alert.rule_id for alert in live.worklist())
        rule = rules.most_common(1)[0][0]
        print(
            f"{label}: {len(stays)} stays, ingest {loaded:.1f} s; live worklist start "
            f"{started:.2f} s, {sum(rules.values())} open alerts "
            f"({rule}: {rules[rule]}); ward of the cursor: {ward} ({wards[ward]} stays)"
        )
        packs = list(live.packs)
        swaps: list[float] = []
        swap = live._swap  # the part under the lock: timed

        def timed_swap(*args: Any) -> Any:
            began = time.perf_counter()
            try:
                return swap(*args)
            finally:
                swaps.append(time.perf_counter() - began)

        live._swap = timed_swap  # type: ignore[method-assign,assignment]
        for n, (name, site) in enumerate(_versions(ward, rule, packs)):
            waited: list[float] = []
            sender = threading.Timer(
                0.05,
                _apply_timed,
                (live, _potassium(patient, as_of - timedelta(hours=1), n), waited),
            )
            began = time.perf_counter()
            sender.start()
            done = live.configure(site)
            spent = time.perf_counter() - began
            sender.join()
            assert done is not None
            print(
                f"  {name}: applied in {spent:.2f} s, of which {swaps[-1]:.2f} s holding the "
                f"worklist (the swap); an ingest's facts sent 50 ms in waited "
                f"{waited[0]:.3f} s; {len(done.opened)} opened, "
                f"{len(done.reopened)} reopened, {len(done.resolved)} resolved"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beds", default="300,1000")
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("VIGIE_TIMEZONE", "UTC")
    from vigie.synthetic import generate
    from vigie.synthetic.catalogue import covered_rules

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    for beds in [int(n) for n in args.beds.split(",")]:
        with tempfile.TemporaryDirectory(prefix="vigie-bench-site-") as name:
            folder = Path(name)
            rates = dict.fromkeys(covered_rules(), 0.3)  # alerts for a configuration to change
            summary = generate(beds, args.days, 1, "csv", folder / "hospital", rates=rates)
            feeds = list(summary.feed_files)
            as_of = summary.start + timedelta(days=args.days)
            print(f"\nhospital: {beds} beds, {args.days} days, as of {as_of:%Y-%m-%d %H:%M}")
            bench_store("SQLite", f"sqlite:///{folder / 'vigie.db'}", feeds, as_of)
            if not args.no_postgres:
                with postgres_schema() as url:
                    bench_store("PostgreSQL", url, feeds, as_of)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak:.0f} MB; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
