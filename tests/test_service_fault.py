"""The fault test of the service (issue 10): ``vigie serve`` as a real process on a SQLite file,
HL7 v2 messages posted one by one to ``POST /ingest/hl7``, the process SIGKILLed in the middle
of the stream, restarted, and every message sent again (what a feed does with the messages it
has no answer for, and more). Then every acknowledged message is stored once, no message twice,
and ``GET /worklist`` is what a clean run of the same messages (another store, no kill) gives.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tests.test_api_ingest import AS_OF, adt, oru, rde
from vigie.api.app import create_app
from vigie.store import FactStore, ServiceStore
from vigie.store.database import RawMessageRow

with warnings.catch_warnings():  # starlette asks for httpx2, which this environment lacks
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[1]
PATIENTS = 14


def _messages() -> list[str]:
    """Per patient: admission, a line (ramipril, or paracetamol), a potassium (high for most);
    for some a corrected potassium (same message id, later sender time), for some a deleted
    one (OBX-11 D)."""
    messages: list[str] = []
    for n in range(PATIENTS):
        pid = f"FT{n:02d}"
        messages.append(adt(pid, ward=("CARDIO", "NEPHRO")[n % 2]))
        ramipril = n % 3 != 2
        messages.append(rde(pid) if ramipril else rde(pid, "N02BE01", "PARACETAMOL 1 G"))
        messages.append(oru(pid, value=f"{5.6 + n / 10:.1f}" if n % 4 else "4.2"))
    for n in range(0, PATIENTS, 3):  # corrections: the later version wins
        pid = f"FT{n:02d}"
        later = oru(pid, value="4.0" if n % 2 else "6.9").replace(
            "20240306081200", "20240306085000"
        )
        messages.append(later)
    for n in range(1, PATIENTS, 5):  # withdrawn results
        messages.append(oru(f"FT{n:02d}", control=f"ORU-FT{n:02d}-D", status="D"))
    return messages


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _server(url: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``vigie serve`` on the store, live worklist as of the messages' day, no ticking."""
    command = [
        sys.executable,
        "-m",
        "vigie.api.cli",
        "serve",
        "--database",
        url,
        "--port",
        str(port),
        "--as-of",
        AS_OF.isoformat(),
        "--tick",
        "0",
    ]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/worklist", timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("vigie serve did not start") from None
                time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _post(port: int, token: str, message: str) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{port}/ingest/hl7",
        content=message.encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/hl7-v2"},
        timeout=10,
    )


def _message_id(message: str) -> str:
    fields = message.split("\r", 1)[0].split("|")
    return f"{fields[2]}^{fields[3]}|{fields[9]}"


def _versions(messages: list[str]) -> dict[str, int]:
    """Message id → its distinct versions (contents) among ``messages``."""
    contents: dict[str, set[str]] = {}
    for message in messages:
        contents.setdefault(_message_id(message), set()).add(message)
    return {message_id: len(found) for message_id, found in contents.items()}


def _raw_rows(url: str) -> dict[str, int]:
    with FactStore(url) as store, store.session() as session:
        rows = session.execute(
            select(RawMessageRow.message_id, func.count()).group_by(RawMessageRow.message_id)
        ).all()
    return {message_id: count for message_id, count in rows}


def test_a_service_killed_mid_ingest_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    messages = _messages()
    url = f"sqlite:///{tmp_path / 'killed.db'}"
    with FactStore(url) as store:
        service = ServiceStore(store)
        feed = service.add_user("feed.fault", ["feed"])[1]
        pharmacist = service.add_user("pharmacist.fault", ["pharmacist"])[1]
    port = _free_port()
    acknowledged: list[str] = []
    kill_after = random.Random().randint(len(messages) // 4, 3 * len(messages) // 4)
    with _server(url, port) as process:

        def killer() -> None:  # SIGKILL while a request is under way, not between two
            while len(acknowledged) < kill_after and process.poll() is None:
                time.sleep(0.001)
            time.sleep(random.uniform(0, 0.02))
            os.kill(process.pid, signal.SIGKILL)

        thread = threading.Thread(target=killer)
        thread.start()
        for message in messages:
            try:
                answer = _post(port, feed, message)
            except httpx.TransportError:
                break  # killed: no answer, so not acknowledged
            if 200 <= answer.status_code < 300:
                acknowledged.append(_message_id(message))
        thread.join()
        assert process.wait(10) == -signal.SIGKILL
    assert 0 < len(acknowledged) < len(messages)
    versions = _versions(messages)
    stored = _raw_rows(url)
    assert set(acknowledged) <= set(stored)  # acknowledged: durably kept
    assert all(count <= versions[message_id] for message_id, count in stored.items())

    with _server(url, port):  # restarted; the feed sends everything again
        again = [_post(port, feed, message) for message in messages]
        assert all(answer.status_code == 200 for answer in again), [a.text for a in again]
        statuses = {
            _message_id(m): a.json()["messages"][0]["status"]
            for m, a in zip(messages, again, strict=True)
        }
        assert {statuses[m] for m in acknowledged if versions[m] == 1} == {"duplicate"}
        worklist = httpx.get(
            f"http://127.0.0.1:{port}/worklist",
            params={"limit": 500},
            headers={"Authorization": f"Bearer {pharmacist}"},
        ).json()
    assert _raw_rows(url) == versions  # each version once (a correction is a row of its own)

    clean = _clean_run(tmp_path, messages)
    assert worklist["total"] == clean["total"] > 0
    assert worklist["items"] == clean["items"]
    with FactStore(url) as killed, FactStore(f"sqlite:///{tmp_path / 'clean.db'}") as reference:
        assert _facts(killed) == _facts(reference)


def _facts(store: FactStore) -> list[dict[str, Any]]:
    return [f.model_dump(mode="json", exclude={"source"}) for f in store.iter_facts()]


def _clean_run(tmp_path: Path, messages: list[str]) -> dict[str, Any]:
    """The same messages into another store, without a kill (in process: the same app)."""
    app = create_app(f"sqlite:///{tmp_path / 'clean.db'}", live=True, as_of=AS_OF, tick_seconds=0)
    service: ServiceStore = app.state.service
    feed = service.add_user("feed.clean", ["feed"])[1]
    pharmacist = service.add_user("pharmacist.clean", ["pharmacist"])[1]
    with TestClient(app) as client:
        for message in messages:
            answer = client.post(
                "/ingest/hl7",
                content=message.encode(),
                headers={"Authorization": f"Bearer {feed}", "Content-Type": "application/hl7-v2"},
            )
            assert answer.status_code == 200, answer.text
        page: dict[str, Any] = client.get(
            "/worklist", params={"limit": 500}, headers={"Authorization": f"Bearer {pharmacist}"}
        ).json()
    return page
