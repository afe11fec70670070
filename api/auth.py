"""Who calls the service: bearer tokens, roles, and the audit of what they read and write.

A request carries ``Authorization: Bearer <token>``; the token (made by ``vigie users add``,
only its hash stored) names a user with one or more roles:

- ``pharmacist``: the worklist, alerts, decisions;
- ``rule_author``: rules and cursors;
- ``admin``: users, wards, the audit log;
- ``feed``: ingest only.

``require(role, ...)`` is the dependency a route declares: without a token, or with a token the
store does not know (or revoked), the answer is 401 with a ``WWW-Authenticate: Bearer`` header;
with a user holding none of the roles, 403 (and the refusal is audited). ``Caller`` is what the
route receives: the user, and ``audit(...)`` (``await audit_async(...)`` in an async route) to
append to the audit log (every read of patient data, every write; a write passes ``entry(...)``
to the store so that the entry commits with it).

A token's user is read from the store at most once per ``TOKEN_CACHE_SECONDS`` (1 s) per
process (``ServiceStore.remembered_user``): a revoked token, a deactivated user or a changed
role counts from at most that later. The dependencies are async: a request whose token was
seen within that second touches neither the database nor the thread pool to be authenticated.
The reads are ``TokenReads``': one at a time per token, and ahead of the expiry while the token
is in use, so that a busy client's requests do not all wait for the store when the second ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from vigie.store import AuditEntry, ServiceStore, User
from vigie.store.service import ROLES, ServiceError

__all__ = [
    "AUDIT_REFUSED",
    "ROLES",
    "Admin",
    "Caller",
    "Feed",
    "Pharmacist",
    "RuleAuthor",
    "TokenReads",
    "bearer",
    "current_user",
    "require",
    "service_of",
    "token_reads_of",
]

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="A Vigie API token (`vigie users add NAME --role ROLE` prints one).",
)
_REALM = 'Bearer realm="vigie"'
AUDIT_REFUSED = "the read could not be written to the audit log; try again"  # the 503's detail


def service_of(request: Request) -> ServiceStore:
    """The service store of the app serving the request (``create_app``)."""
    service: ServiceStore = request.app.state.service
    return service


class TokenReads:
    """The users of tokens, as the store gives them (``ServiceStore.authenticate``, in a worker
    thread) and the process remembers them (``remembered_user``). Requests that find a token's
    user not remembered wait for one read together; a user remembered for less than half the
    cache time more (``token_read_due``) is read again in the background while the requests go
    on with it, so that, while a token is in use, its requests seldom wait for the store."""

    def __init__(self, service: ServiceStore) -> None:
        self._service = service
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading: dict[str, asyncio.Future[User | None]] = {}

    async def user(self, token: str) -> User | None:
        """The token's user (active, the token not revoked), or None."""
        user = self._service.remembered_user(token)
        if user is None:
            return await asyncio.shield(self._read(token))
        if self._service.token_read_due(token):
            self._read(token)
        return user

    def _read(self, token: str) -> asyncio.Future[User | None]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (a test client's): start afresh
            self._loop, self._reading = loop, {}
        reading = self._reading.get(token)
        if reading is None:
            reading = asyncio.ensure_future(run_in_threadpool(self._service.authenticate, token))
            self._reading[token] = reading
            reading.add_done_callback(lambda done: self._ended(token, done))
        return reading

    def _ended(self, token: str, done: asyncio.Future[User | None]) -> None:
        if self._reading.get(token) is done:
            del self._reading[token]
        if not done.cancelled():
            # A read ahead that failed is not an error yet: once the user is no longer
            # remembered, the next request reads again and answers the failure (503).
            done.exception()


def token_reads_of(app: Any) -> TokenReads:
    """The app's token reads (made with the first request)."""
    state = app.state
    reads: TokenReads | None = getattr(state, "token_reads", None)
    if reads is None:
        reads = state.token_reads = TokenReads(state.service)
    return reads


def _unauthorised(detail: str, challenge: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": challenge}
    )


async def current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User:
    """The user of the request's bearer token, or 401 (the store is read in a worker thread
    when the token was not seen in the last second)."""
    if credentials is None:
        raise _unauthorised("a bearer token is required (Authorization: Bearer <token>)", _REALM)
    user = await token_reads_of(request.app).user(credentials.credentials)
    if user is None:
        raise _unauthorised(
            "the bearer token is not valid (unknown or revoked)",
            f'{_REALM}, error="invalid_token"',
        )
    return user


@dataclass(frozen=True)
class Caller:
    """The authenticated user of a request, and the audit of what it does."""

    user: User
    service: ServiceStore
    method: str
    path: str

    def entry(
        self,
        action: str,
        resource: str | None = None,
        patient_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """An audit entry of this caller (``resource`` defaults to the request's path)."""
        return AuditEntry(
            actor=self.user.name,
            roles=self.user.roles,
            action=action,
            resource=resource or f"{self.method} {self.path}",
            patient_id=patient_id,
            detail=detail,
        )

    def audit(
        self,
        action: str,
        resource: str | None = None,
        patient_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Append an entry to the audit log now (a read; a write passes ``entry`` to the store
        instead, to commit with it)."""
        self.service.audit(self.entry(action, resource, patient_id, detail))

    async def audit_async(
        self,
        action: str,
        resource: str | None = None,
        patient_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """``audit`` for an async route: returns once the entry is committed, without holding
        the event loop or a worker thread meanwhile (the store's group commit, which settles
        the waiters of one commit by one callback on the loop)."""
        entry = self.entry(action, resource, patient_id, detail)
        try:
            await self.service.submit_audit_async(entry)
        except ServiceError as error:  # no read answered without its audit entry
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, detail=AUDIT_REFUSED
            ) from error


def require(*roles: str) -> Any:
    """The dependency of a route open to users holding any of ``roles``: gives a ``Caller``."""
    unknown = [role for role in roles if role not in ROLES]
    if not roles or unknown:
        raise ValueError(f"require() takes roles of {ROLES}, got {roles}")

    async def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Caller:
        # current_user called, not declared: one dependency level less to solve per request
        user = await current_user(request, credentials)
        caller = Caller(user, service_of(request), request.method, request.url.path)
        if not set(user.roles) & set(roles):
            await caller.audit_async("denied", detail={"required": list(roles)})
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"this needs the role {' or '.join(roles)}; "
                f"{user.name} has {', '.join(user.roles)}",
            )
        return caller

    check.__name__ = f"require_{'_or_'.join(roles)}"
    return Depends(check)


# What a route declares: ``caller: Pharmacist`` (a user holding the role; 401/403 otherwise).
Pharmacist = Annotated[Caller, require("pharmacist")]
RuleAuthor = Annotated[Caller, require("rule_author")]
Admin = Annotated[Caller, require("admin")]
Feed = Annotated[Caller, require("feed")]
