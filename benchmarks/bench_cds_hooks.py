"""CDS Hooks answer time: an order-sign call with a realistic prefetch, against the 500 ms target.

The router (``vigie.api.cds_hooks.cds_router``) is mounted on a bare FastAPI app and called
in-process through the test client (request JSON, routing, prefetch read by the FHIR
connector (fast path and element check, or validation), evaluation, cards, response JSON:
everything but the network).
The patient is Coleman Ortiz (Synthea R4, shared data) on 1980-07-16 21:00 UTC, signing a new
metformin order while his eGFR is 5.3 (a card with a suggestion). Two prefetch sizes, calls
alternated:

- ``outpatient``: the discovery document's prefetch as is (Patient, 7 active orders, the 24
  Observations of the last 90 days);
- ``inpatient``: every one of his 414 Observations moved into the last 90 days (times kept in
  order), as a long stay's labs and vitals would be.

Printed per case: the prefetch size, median and p99 wall time per call, against the target;
the first call after start-up is printed separately (the router warms up when built).

Every object alive once the routers are built (modules, FHIR models, rule packs, terminology
tables: about 230,000) is moved out of the garbage collector's reach (``gc.freeze()``), as
``vigie serve`` does after start-up: a full collection then walks only what calls made since.
``--no-gc-freeze`` shows the cost without it: a full collection (every few inpatient calls)
walks them all, 100-180 ms on this machine, most of the inpatient p99.

``--store URL`` keeps the cards answered in that store (``StoredCards``, as ``vigie serve``
does: one insert per answer, so that feedback reaches any process) instead of in process
memory; ``--store both`` runs three keepers, calls alternated so that noise hits all alike: in
memory, a fresh SQLite file, and a fresh schema of the test PostgreSQL (dropped at the end), so
that the cost of keeping the cards is measured in one run.

    .venv/bin/python benchmarks/bench_cds_hooks.py [--calls 200] [--ansm] [--validate-prefetch]
        [--no-gc-freeze] [--store URL|both]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import tempfile
import time
import warnings
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench_ingest_store import postgres_schema
from fastapi import FastAPI

from vigie import settings
from vigie.api.cds_hooks import CardKeeper, StoredCards, cds_router, default_packs
from vigie.store import FactStore, ServiceStore

with warnings.catch_warnings():  # starlette asks for httpx2
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TARGET = 0.500  # seconds, issue 10
NOW = datetime(1980, 7, 16, 21, 0, tzinfo=UTC)
DAYS = 90


def coleman() -> list[dict[str, Any]]:
    folder = Path(settings.value("shared_data")) / "fhir" / "synthea-r4"
    (path,) = folder.glob("Coleman_Ortiz_*.json")
    resources = [e["resource"] for e in json.loads(path.read_text(encoding="utf-8"))["entry"]]
    patient_id = resources[0]["id"]
    for resource in resources:  # literal references, as a FHIR server serves them
        for key in ("subject", "patient"):
            if key in resource:
                resource[key] = {"reference": f"Patient/{patient_id}"}
        resource.pop("encounter", None)
    return resources


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    entries = [{"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r} for r in resources]
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries}


def moved_into_window(observations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every observation, its time moved into the last ``DAYS`` days, in the same order."""
    timed = sorted(observations, key=lambda r: r["effectiveDateTime"])
    start, step = NOW - timedelta(days=DAYS), timedelta(days=DAYS) / (len(timed) + 1)
    moved = []
    for index, resource in enumerate(timed, 1):
        resource = copy.deepcopy(resource)
        at = (start + step * index).isoformat().replace("+00:00", "Z")
        resource["effectiveDateTime"] = at
        resource.pop("issued", None)
        moved.append(resource)
    return moved


def order_sign(resources: list[dict[str, Any]], observations: list[dict[str, Any]]) -> bytes:
    orders = [
        r for r in resources if r["resourceType"] == "MedicationRequest" and r["status"] == "active"
    ]
    (metformin,) = [r for r in orders if "etformin" in json.dumps(r["medicationCodeableConcept"])]
    draft = copy.deepcopy(metformin)
    draft.update(id="draft-metformin", status="draft")
    (patient,) = [r for r in resources if r["resourceType"] == "Patient"]
    body = {
        "hook": "order-sign",
        "hookInstance": "bench",
        "context": {
            "userId": "Practitioner/1",
            "patientId": patient["id"],
            "draftOrders": {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": draft}],
            },
        },
        "prefetch": {
            "patient": patient,
            "medications": searchset(orders),
            "observations": searchset(observations),
        },
    }
    return json.dumps(body).encode()


def cases() -> dict[str, bytes]:
    resources = coleman()
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    since = (NOW - timedelta(days=DAYS)).date().isoformat()
    recent = [r for r in observations if r.get("effectiveDateTime", "")[:10] >= since]
    recent = [r for r in recent if r["effectiveDateTime"][:10] <= NOW.date().isoformat()]
    return {
        "outpatient": order_sign(resources, recent),
        "inpatient": order_sign(resources, moved_into_window(observations)),
    }


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def keepers(store: str | None, stack: ExitStack) -> dict[str, CardKeeper | None]:
    """The card keepers to compare, by label (None: the router's own, in process memory)."""
    if store is None:
        return {"memory": None}
    if store != "both":
        return {"store": StoredCards(ServiceStore(stack.enter_context(FactStore(store))))}
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
    sqlite = stack.enter_context(FactStore(f"sqlite:///{folder / 'cards.db'}"))
    postgres = stack.enter_context(FactStore(stack.enter_context(postgres_schema())))
    return {
        "memory": None,
        "SQLite": StoredCards(ServiceStore(sqlite)),
        "PostgreSQL": StoredCards(ServiceStore(postgres)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per case")
    parser.add_argument("--ansm", action="store_true", help="the ANSM pack too")
    parser.add_argument(
        "--validate-prefetch",
        action="store_true",
        help="prefetch validated with the fhir.resources R4B models (validate_prefetch), "
        "instead of the default fast path with its element check",
    )
    parser.add_argument(
        "--gc-freeze",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="gc.freeze() once the routers are built, as vigie serve does after start-up "
        "(default; --no-gc-freeze to see what full collections cost without it)",
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        help="keep the cards in this store ('both': SQLite and PostgreSQL)",
    )
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, load average {load:.1f}")
    with ExitStack() as stack:
        run(args, keepers(args.store, stack))


def run(args: argparse.Namespace, kept_by: dict[str, CardKeeper | None]) -> None:
    started = time.perf_counter()
    packs = default_packs(ansm=args.ansm)
    validated = args.validate_prefetch
    clients = {}
    for label, keeper in kept_by.items():
        app = FastAPI()
        router = cds_router(packs, clock=lambda: NOW, validate_prefetch=validated, cards=keeper)
        app.include_router(router)
        clients[label] = TestClient(app)
    if args.gc_freeze:
        gc.collect()
        gc.freeze()
    print(f"objects the garbage collector walks in a full collection: {len(gc.get_objects())}")
    names = " + ".join(pack.name for pack in packs)
    how = "validated with the R4B models" if validated else "fast path with the element check"
    print(f"prefetch read: {how}")
    print(f"cards kept: {', '.join(kept_by)}")
    print(f"routers built ({names}, warm-up included) in {time.perf_counter() - started:.2f} s")
    bodies = cases()
    headers = {"content-type": "application/json"}
    times: dict[tuple[str, str], list[float]] = {
        (name, label): [] for name in bodies for label in clients
    }
    for index in range(args.calls + 1):
        for name, body in bodies.items():  # alternated, so that noise hits every case
            for label, client in clients.items():
                began = time.perf_counter()
                response = client.post(
                    "/cds-services/vigie-order-sign", content=body, headers=headers
                )
                elapsed = time.perf_counter() - began
                assert response.status_code == 200, response.text
                assert response.json()["cards"], "the metformin card is missing"
                if index == 0:
                    print(f"  {name}, cards kept in {label}: first call {elapsed * 1e3:.1f} ms")
                else:
                    times[name, label].append(elapsed)
    for (name, label), samples in times.items():
        size = len(bodies[name]) / 1024
        median, p99 = statistics.median(samples), quantile(samples, 0.99)
        base = statistics.median(times[name, next(iter(clients))])
        versus = f", {(median - base) * 1e3:+.1f} ms on the median" if label != "memory" else ""
        print(
            f"{name}, cards kept in {label} ({size:.0f} KB request, {len(samples)} calls): "
            f"median {median * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms{versus}; target "
            f"{TARGET * 1e3:.0f} ms: {'met' if p99 <= TARGET else 'MISSED'} "
            f"(p99 {p99 / TARGET:.0%} of it)"
        )


if __name__ == "__main__":
    main()
