"""``GET /worklist`` served from pages kept per generation of the alerts, the token cache and the
group-commit audit (vigie.api.routes.worklist, vigie.api.auth, vigie.store.service.AuditWriter):

- a kept page is never served after a write of the alerts commits, whoever writes (the app's
  own store, another store on the same database, another process): the answer is always the
  store's worklist as read at that moment;
- every write of the alerts (reconcile, apply_diff, decision) makes a new generation, a read
  does not, and a store made again does not give an old generation back;
- the fast path (``WorklistFastPath``) answers what the route would, with the same audit
  entry, for a pharmacist's valid request, and leaves every other request to the route;
- a revoked token is refused once ``TOKEN_CACHE_SECONDS`` have passed since the revocation
  committed (and not later); requests arriving together wait for one read of their token's
  user, and a token in use is read again ahead of its expiry without holding its requests;
- every read is audited with the alerts and patients it showed, concurrent reads included,
  and a read whose audit entry cannot be written is not answered with the page.

On SQLite and PostgreSQL (``store_url``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import HTTPException

from tests.test_api import P1_ALERT, P2_ALERT, _second_patient
from tests.test_evaluate import NOW, default_ir, hyperkalaemia_facts
from vigie.api.app import create_app
from vigie.api.auth import Pharmacist
from vigie.api.cli import main
from vigie.api.routes.worklist import WorklistFastPath, WorklistPages
from vigie.engine import FactSet, evaluate
from vigie.store import AuditEntry, FactStore, ServiceStore, User
from vigie.store.alerts import Dismissal
from vigie.store.service import TOKEN_CACHE_SECONDS, AuditWriter, ServiceError

with warnings.catch_warnings():  # starlette asks for httpx2, which this environment lacks
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture
def served(store_url: str) -> Iterator[tuple[TestClient, ServiceStore, str]]:
    """The app on a store holding the open alerts of p1 and p2, a pharmacist's token."""
    app = create_app(store_url)
    service: ServiceStore = app.state.service
    facts = [*hyperkalaemia_facts(), *_second_patient()]
    service.alerts.reconcile(evaluate(default_ir(), FactSet(facts), NOW), NOW)
    _, token = service.add_user("pharm.a", ["pharmacist"])
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client, service, token


def _shown(client: TestClient, query: str = "") -> dict[str, Any]:
    answer = client.get(f"/worklist{query}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _expected(service: ServiceStore) -> tuple[int, list[str]]:
    """What the store's worklist holds now (read without the service)."""
    return service.alerts.worklist_size(), [a.id for a in service.alerts.worklist(limit=50)]


def _ids(page: dict[str, Any]) -> tuple[int, list[str]]:
    return page["total"], [item["id"] for item in page["items"]]


# Kept pages and the alerts' generation --------------------------------------------------------


def test_a_kept_page_is_never_served_after_a_write_of_the_alerts(
    served: tuple[TestClient, ServiceStore, str], store_url: str
) -> None:
    client, service, _ = served
    first = _shown(client)
    assert _ids(first) == _expected(service)
    assert {P1_ALERT, P2_ALERT} <= set(_ids(first)[1])
    assert _shown(client) == first  # kept: the same page

    # A decision through another store on the same database (another connection pool).
    with FactStore(store_url) as other:
        ServiceStore(other).decide(P2_ALERT, Dismissal("not_relevant", ""), actor="pharm.b")
    after_dismissal = _shown(client)
    assert P2_ALERT not in _ids(after_dismissal)[1]
    assert _ids(after_dismissal) == _expected(service)
    assert after_dismissal["total"] == first["total"] - 1

    # An evaluation that no longer raises p1's alerts, from another process.
    script = (
        "import sys; from datetime import datetime; from vigie.store import AlertStore, "
        "FactStore\nwith FactStore(sys.argv[1]) as s:\n"
        "    AlertStore(s).reconcile([], datetime(2024, 3, 4, 13), scope={'p1'})"
    )
    subprocess.run([sys.executable, "-c", script, store_url], check=True, timeout=120)
    after_evaluation = _shown(client)
    assert P1_ALERT not in _ids(after_evaluation)[1]
    assert _ids(after_evaluation) == _expected(service)

    # The filtered pages and the other pages follow as well.
    assert _ids(_shown(client, "?patient=p2")) == (0, [])
    assert _ids(_shown(client, "?limit=1&offset=0"))[0] == after_evaluation["total"]


def test_every_write_of_the_alerts_makes_a_new_generation(store_url: str) -> None:
    facts = [*hyperkalaemia_facts(), *_second_patient()]
    raised = evaluate(default_ir(), FactSet(facts), NOW)
    with FactStore(store_url) as store:
        service = ServiceStore(store)
        seen = [service.alerts.generation()]
        service.alerts.reconcile(raised, NOW)
        seen.append(service.alerts.generation())
        service.alerts.worklist()
        assert service.alerts.generation() == seen[-1]  # a read changes nothing
        service.decide(P1_ALERT, Dismissal("not_relevant", ""), actor="pharm.a")
        seen.append(service.alerts.generation())
        service.alerts.reconcile([], NOW, scope={"p2"})
        seen.append(service.alerts.generation())
        assert all(g is not None for g in seen)
        assert seen == sorted(set(seen)), seen  # each write: a new, larger one
        store.reset()
        assert service.alerts.generation() > seen[-1]  # made again: never an old number


def test_a_broken_generation_connection_is_replaced_without_failing_a_read(
    served: tuple[TestClient, ServiceStore, str],
) -> None:
    """The connection held for the generation's reads closed under it (a database restarted):
    the read is answered all the same (SQLite: read in a thread; PostgreSQL: the route reads
    again), and the next reads use a new connection."""
    client, service, _ = served
    first = _shown(client)
    reader = client.app.state.worklist_pages._generations._reader  # type: ignore[attr-defined]
    broken = reader._connection
    broken.close()
    service.decide(P2_ALERT, Dismissal("not_relevant", ""), actor="pharm.b")
    after = _shown(client)
    assert _ids(after) == _expected(service) != _ids(first)
    assert _shown(client) == after
    assert reader._connection is not None and reader._connection is not broken


# The fast path ---------------------------------------------------------------------------------

# Query strings: valid ones, values the route's validation refuses (422), and valid ones the fast
# path leaves to the route's validation (a sign, spaces, underscores, a parameter given twice)
QUERIES = [
    "",
    "limit=50",
    "limit=1&offset=1",
    "limit=500&offset=1000000000",
    "limit=050",
    "ward=NEPHRO&severity=major&severity=critical&rule=bio.hyperkalaemia&patient=p1",
    "severity=major&severity=major",
    "ward=",
    "ward=" + "x" * 128,
    "patient=%C3%A9%FF&unknown=1",
    "limit=0",
    "limit=501",
    "offset=-1",
    "offset=1000000001",
    "ward=" + "x" * 129,
    "severity=",
    "severity=MAJOR",
    "limit=%D9%A3",  # an Arabic-Indic digit
    "limit=abc",
    "limit=+5",
    "limit=5_0",
    "limit=%205",
    "limit=1&limit=2",
    "ward=a&ward=b",
]


def test_the_fast_path_answers_as_the_route_would_or_leaves_the_request_to_it(
    served: tuple[TestClient, ServiceStore, str], store_url: str
) -> None:
    """The same store served twice: ``fast``, whose route is made to answer 418 (so that an
    answer which is not 418 is the fast path's), and ``routed``, without the fast path. Every
    answer of the fast path is the route's (status, body, type), with the same audit entry;
    it answers the valid queries of a pharmacist's token and leaves the rest to the route."""
    _, service, token = served
    _, feed_token = service.add_user("feed.a", ["feed"])
    fast, routed = create_app(store_url), create_app(store_url)
    pharmacist = Pharmacist.__metadata__[0].dependency

    def teapot() -> None:
        raise HTTPException(418, "the route")

    fast.dependency_overrides[pharmacist] = teapot
    routed.user_middleware = [m for m in routed.user_middleware if m.cls is not WorklistFastPath]
    authorisations = {
        "pharmacist": f"Bearer {token}",
        "scheme in lower case, spaces": f"bearer   {token}  ",
        "no token": None,
        "empty token": "Bearer ",
        "another scheme": f"Basic {token}",
        "unknown token": "Bearer vigie_unknown",
        "feed": f"Bearer {feed_token}",
    }
    answered = set()
    with TestClient(fast) as by_fast, TestClient(routed) as by_route:
        for who, authorisation in authorisations.items():
            headers = {} if authorisation is None else {"Authorization": authorisation}
            for query in QUERIES:
                expected = by_route.get(f"/worklist?{query}", headers=headers)
                expected_entry = service.audit_log(limit=1)[0]
                got = by_fast.get(f"/worklist?{query}", headers=headers)
                if got.status_code == 418:
                    continue
                answered.add((who, query))
                assert (got.status_code, got.content) == (expected.status_code, expected.content)
                assert got.headers["content-type"] == expected.headers["content-type"]
                entry = service.audit_log(limit=1)[0]
                assert entry.seq != expected_entry.seq
                assert replace(entry, at=None, seq=None) == replace(
                    expected_entry, at=None, seq=None
                )
    valid = set(QUERIES[:10])
    assert answered == {(who, q) for who in list(authorisations)[:2] for q in valid}


# Tokens --------------------------------------------------------------------------------------


def test_a_revoked_token_is_refused_once_the_cache_delay_has_passed(
    served: tuple[TestClient, ServiceStore, str],
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, service, token = served
    clock = [1000.0]
    monkeypatch.setattr(service, "clock", lambda: clock[0])
    assert client.get("/worklist").status_code == 200  # the token's user read and kept
    with FactStore(store_url) as other:
        assert ServiceStore(other).revoke_token(token)
    clock[0] += TOKEN_CACHE_SECONDS / 2
    assert client.get("/worklist").status_code == 200  # within the delay: still the kept user
    clock[0] += TOKEN_CACHE_SECONDS / 2
    refused = client.get("/worklist")
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]


def test_a_tokens_user_is_read_once_for_requests_together_and_ahead_of_its_expiry(
    served: tuple[TestClient, ServiceStore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, service, token = served
    clock = [1000.0]
    monkeypatch.setattr(service, "clock", lambda: clock[0])
    reads: list[str] = []
    read_ahead_may_end = threading.Event()
    authenticate = service.authenticate

    def counted(read_token: str) -> User | None:
        reads.append(read_token)
        if len(reads) > 1:
            assert read_ahead_may_end.wait(10)
        else:
            time.sleep(0.1)  # the other requests arrive meanwhile
        return authenticate(read_token)

    monkeypatch.setattr(service, "authenticate", counted)

    async def together(count: int, reads_begun: int = 0) -> list[int]:
        transport = httpx.ASGITransport(app=client.app)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://vigie", headers=headers
        ) as reader:
            answers = await asyncio.gather(*(reader.get("/worklist") for _ in range(count)))
        # The answers are in; a read ahead begun in the background may not have reached its
        # worker thread yet: the loop lives on until it has (it would be cancelled with it).
        deadline = time.monotonic() + 10
        while len(reads) < reads_begun and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return [answer.status_code for answer in answers]

    assert asyncio.run(together(30)) == [200] * 30
    assert len(reads) == 1  # a token the process did not know: one read for all
    clock[0] += TOKEN_CACHE_SECONDS * 0.4
    assert asyncio.run(together(10)) == [200] * 10
    assert len(reads) == 1  # remembered
    clock[0] += TOKEN_CACHE_SECONDS * 0.2  # less than half the delay left: a read ahead
    assert asyncio.run(together(10, reads_begun=2)) == [200] * 10  # answered while held
    assert reads == [token, token]
    read_ahead_may_end.set()
    deadline = time.monotonic() + 10
    while service.token_read_due(token) and time.monotonic() < deadline:
        time.sleep(0.01)
    clock[0] += TOKEN_CACHE_SECONDS * 0.5  # past the first read's expiry, not the second's
    assert asyncio.run(together(10)) == [200] * 10
    assert len(reads) == 2


def test_a_revoked_token_is_refused_after_the_delay_in_real_time(
    served: tuple[TestClient, ServiceStore, str], store_url: str
) -> None:
    client, service, token = served
    assert client.get("/worklist").status_code == 200
    assert service.revoke_token(token)
    assert not service.revoke_token(token)  # revoked once
    time.sleep(TOKEN_CACHE_SECONDS)
    assert client.get("/worklist").status_code == 401


# Audit ---------------------------------------------------------------------------------------


def test_every_concurrent_read_is_audited_with_what_it_showed(
    served: tuple[TestClient, ServiceStore, str], store_url: str
) -> None:
    client, service, token = served
    app = client.app
    before = service.audit_size()

    async def read_all(count: int) -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://vigie", headers=headers
        ) as reader:
            first = asyncio.gather(*(reader.get("/worklist") for _ in range(count)))
            answers = list(await first)
            # the worklist changes between two waves of reads
            await asyncio.to_thread(
                service.decide, P1_ALERT, Dismissal("not_relevant", ""), actor="pharm.b"
            )
            second = asyncio.gather(
                *(reader.get("/worklist", params={"ward": "NEPHRO"}) for _ in range(count))
            )
            return answers + list(await second)

    answers = asyncio.run(read_all(60))
    assert [a.status_code for a in answers] == [200] * 120
    shown = Counter(tuple(item["id"] for item in a.json()["items"]) for a in answers)
    assert len(shown) == 2  # two different pages
    reads = [
        entry
        for entry in service.audit_log(action="read", limit=1000)
        if entry.resource == "worklist" and entry.actor == "pharm.a"
    ]
    assert len(reads) == 120 == service.audit_size() - before
    audited = Counter(tuple(entry.detail["alerts"]) for entry in reads)  # type: ignore[index]
    assert audited == shown
    patients = {tuple(entry.detail["patients"]) for entry in reads}  # type: ignore[index]
    assert patients == {("p1", "p2"), ("p2",)}


def test_a_read_whose_audit_cannot_be_written_is_not_answered(
    served: tuple[TestClient, ServiceStore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, service, _ = served
    before = service.audit_size()

    def refuse(entries: list[AuditEntry]) -> None:
        raise ServiceError("cannot write the audit log in the store: disk full")

    monkeypatch.setattr(service, "_write_audit", refuse)
    monkeypatch.setattr(service._audit_writer, "_write", refuse)
    answer = client.get("/worklist")
    assert answer.status_code == 503
    assert answer.json() == {"detail": "the read could not be written to the audit log; try again"}
    monkeypatch.undo()
    assert service.audit_size() == before


def test_the_audit_writer_commits_waiting_entries_together_and_fails_only_a_bad_one() -> None:
    batches: list[list[str]] = []
    release = Future[None]()

    def write(entries: list[AuditEntry]) -> None:
        if entries[0].action == "first":
            release.result(10)  # hold the first commit: the next entries wait together
        if any(entry.action == "bad" for entry in entries):
            raise ServiceError("refused")
        batches.append([entry.action for entry in entries])

    writer = AuditWriter(write, idle=0.5)
    entry = AuditEntry("pharm.a", ("pharmacist",), "first", "worklist")
    first = writer.submit(entry)
    time.sleep(0.05)  # the thread took the first entry alone
    others = [
        writer.submit(AuditEntry("pharm.a", ("pharmacist",), action, "worklist"))
        for action in ("a", "bad", "b")
    ]
    release.set_result(None)
    first.result(10)
    assert others[0].result(10) is None and others[2].result(10) is None
    with pytest.raises(ServiceError, match="refused"):
        others[1].result(10)
    # the three waited together, were refused together, then written one by one
    assert batches == [["first"], ["a"], ["b"]]
    assert all(f.done() for f in others)


def test_the_audit_writers_of_a_sqlite_file_take_turns_through_its_lock_file(
    tmp_path: Path,
) -> None:
    """Another process's audit writer holding the turn (its flock on ``<database>-audit.lock``):
    this store's audit write waits for it, then commits once it is released."""
    database = tmp_path / "vigie.db"
    with FactStore(f"sqlite:///{database}") as store:
        service = ServiceStore(store)
        other = os.open(f"{database}-audit.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(other, fcntl.LOCK_EX)
        entry = AuditEntry("pharm.a", ("pharmacist",), "read", "worklist")
        written = threading.Thread(target=service.audit, args=(entry,))
        written.start()
        written.join(0.5)
        assert written.is_alive() and service.audit_size() == 0  # waiting for its turn
        os.close(other)
        written.join(10)
        assert not written.is_alive() and service.audit_size() == 1


# vigie serve --workers -----------------------------------------------------------------------


def test_serve_refuses_several_workers_with_the_live_worklist_or_mllp() -> None:
    for options in (["--workers", "2"], ["--no-live", "--workers", "2", "--mllp-port", "0"]):
        with pytest.raises(SystemExit, match="live worklist and the MLLP listener"):
            main(["serve", "--database", "sqlite:///unused.db", *options])


@pytest.mark.slow
def test_several_workers_serve_the_same_worklist_and_see_each_write(
    served: tuple[TestClient, ServiceStore, str], store_url: str
) -> None:
    """``vigie serve --workers 2`` (real processes): every answer, whichever worker gives it,
    follows a decision taken by another process, and every read is audited."""
    _, service, token = served
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    vigie = Path(sys.executable).parent / "vigie"
    command = [str(vigie), "serve", "--no-refresh", "--workers", "2"]
    command += ["--database", store_url, "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    headers = {"Authorization": f"Bearer {token}"}
    url = f"http://127.0.0.1:{port}/worklist"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url, headers=headers).status_code == 200:
                    break
            time.sleep(0.2)
        before = service.audit_size()
        first = [httpx.get(url, headers=headers).json() for _ in range(10)]  # new connections
        assert all(P2_ALERT in _ids(page)[1] for page in first)
        service.decide(P2_ALERT, Dismissal("not_relevant", ""), actor="pharm.b")
        after = [httpx.get(url, headers=headers).json() for _ in range(10)]
        assert all(_ids(page) == _expected(service) for page in after)
        assert all(P2_ALERT not in _ids(page)[1] for page in after)
        assert service.audit_size() - before == 20
    finally:
        server.terminate()
        assert server.wait(30) == 0


def test_the_pages_kept_are_bounded_in_number_and_bytes(
    served: tuple[TestClient, ServiceStore, str],
) -> None:
    _, service, _ = served
    queries = [(None, None, None, None, limit, 0) for limit in (1, 2, 3)]

    async def read(pages: WorklistPages) -> list[bytes]:
        return [(await pages.page(query)).body for query in queries]

    by_number = WorklistPages(service.alerts, max_pages=2)
    bodies = asyncio.run(read(by_number))
    by_number.close()
    assert [json.loads(body)["limit"] for body in bodies] == [1, 2, 3]
    assert list(by_number._pages) == queries[1:]  # the oldest went first
    by_bytes = WorklistPages(service.alerts, max_bytes=len(bodies[2]))
    asyncio.run(read(by_bytes))
    by_bytes.close()
    assert list(by_bytes._pages) == queries[2:]
