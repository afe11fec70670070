"""Property-based tests of the service from its OpenAPI schema (schemathesis): every operation
the app publishes, with requests generated from the schema (valid ones, and invalid ones:
wrong types, out-of-range numbers, missing fields, bad bodies), sent in-process (ASGI) with the
token of a user of each role, or of one holding every role (so that most requests reach the
routes' own code), never gets a 5xx.

The store (SQLite, and PostgreSQL marked ``postgres``) holds the real alerts of two patients
(tests/test_api.py's facts); a path parameter naming an alert or a CDS service is, in one
request out of two, one that exists, so that the routes answer from data rather than 404.

The examples derive from a fixed seed (``derandomize``): a run is reproducible.
``VIGIE_SCHEMA_EXAMPLES`` sets how many per operation and generation mode (default 15, about
12 s per backend; 100 finds nothing more today, in about 60 s per backend).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_api import (  # noqa: F401  (fixtures and the backend parametrisation)
    P1_ALERT,
    P2_ALERT,
    ROLES,
    _second_patient,
    database_url,
    pytest_generate_tests,
)
from tests.test_evaluate import NOW, default_ir, hyperkalaemia_facts
from vigie import settings as vigie_settings
from vigie.api.app import create_app
from vigie.engine import FactSet, evaluate

with warnings.catch_warnings():  # starlette's test client asks for httpx2, which this lacks
    warnings.simplefilter("ignore")
    import schemathesis
    from fastapi.testclient import TestClient
    from schemathesis import GenerationMode
    from schemathesis.core.result import Err, Ok

pytestmark = [pytest.mark.slow, pytest.mark.property]

EXAMPLES = int(vigie_settings.value("schema_examples"))
# Who calls: one user per role, and one holding them all (most requests reach the route).
CALLERS = ("every role", "every role", "every role", *ROLES)


@dataclass
class Served:
    app: Any
    tokens: dict[str, str]  # caller -> token
    known: dict[str, list[str]]  # path parameter -> values that exist
    statuses: dict[str, Counter[int]] = field(default_factory=dict)  # operation -> answers


@pytest.fixture(scope="module")
def served(database_url: str) -> Iterator[Served]:  # noqa: F811
    with pytest.MonkeyPatch.context() as patch:
        # the metrics export needs its pseudonym key, else it is (rightly) a 503
        patch.setenv("VIGIE_PSEUDONYM_KEY", "schema-test-key-0123456789")
        app = create_app(database_url)
        service = app.state.service
        facts = [*hyperkalaemia_facts(), *_second_patient()]
        service.alerts.reconcile(evaluate(default_ir(), FactSet(facts), NOW), NOW)
        with service.facts._write_session() as session:
            service.facts.save_facts(session, facts, None)
            session.commit()
        tokens = {role: service.add_user(f"{role}.s", [role])[1] for role in ROLES}
        tokens["every role"] = service.add_user("all.s", list(ROLES))[1]
        with TestClient(app) as client:
            answer = client.get("/cds-services", headers=_bearer(tokens["every role"]))
        services = [s["id"] for s in answer.json().get("services", [])] if answer.is_success else []
        known = {"alert_id": [P1_ALERT, P2_ALERT], "service_id": services}
        yield Served(app, tokens, known)
        service.facts.close()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _server_error(served: Served, operation: Any, mode: GenerationMode) -> str | None:
    """None, or how ``operation`` answered 5xx (or raised) for a generated request (the
    simplest one Hypothesis could shrink it to)."""
    failures: list[str] = []
    statuses = served.statuses.setdefault(operation.label, Counter())

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        case=operation.as_strategy(generation_mode=mode),
        caller=st.sampled_from(CALLERS),
        existing=st.booleans(),
    )
    def run(case: Any, caller: str, existing: bool) -> None:
        if existing and case.path_parameters:
            for name in list(case.path_parameters):
                if served.known.get(name):
                    case.path_parameters[name] = served.known[name][0]
        headers = _bearer(served.tokens[caller])
        try:
            response = case.call(headers=headers)
        except Exception as error:  # the app let an exception through
            failures.append(f"raised {type(error).__name__}: {error}")
            raise
        statuses[response.status_code] += 1
        if response.status_code >= 500:
            curl = case.as_curl_command(headers=headers)
            failures.append(f"{response.status_code} {response.text[:300]}\n    {curl}")
            raise AssertionError(failures[-1])

    try:
        run()
    except Exception:
        return failures[-1] if failures else "failed"
    return None


def test_no_operation_answers_a_server_error(served: Served) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", served.app)
    results = list(schema.get_all_operations())
    invalid = [str(result.err()) for result in results if isinstance(result, Err)]
    assert not invalid, invalid
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    labels = {operation.label for operation in operations}
    # every resource is in the schema (a route module that failed to load would silently
    # leave its operations untested)
    assert {"GET /worklist", "GET /rules", "POST /rules/check", "PUT /config/cursors"} <= labels
    found = {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failure = _server_error(served, operation, mode)
            if failure is not None:
                found[f"{operation.label} ({mode.value})"] = failure
    assert not found, "\n".join(f"{label}: {failure}" for label, failure in found.items())
    # the tokens work: every operation was reached past authentication and roles
    unreached = [
        label for label, answers in served.statuses.items() if not set(answers) - {401, 403}
    ]
    assert not unreached, served.statuses
