"""``GET /config/cursors``, ``PUT /config/cursors`` and ``GET /config/cursors/versions``: the
site configuration (per hospital and ward: packs on, rules on or off, sensitivity level, cursor
values), as ``vigie.engine.site_config`` defines it and ``docs/site-config.example.toml`` shows.

Who: reading is open to rule authors and pharmacists (a pharmacist sees the thresholds in force
on a ward), changing it is the rule author's.

A new configuration is sent whole, as JSON (``{"config": {"hospital": {...}, "wards": {...}},
"comment": ...}``, the TOML file's tables as objects) or as the TOML text itself (JSON ``{"text":
...}``, or a body of media type ``application/toml`` or ``text/plain``). It is checked against the
packs the service runs (``GET /rules``): an unknown pack, rule id, cursor or key, a bad level,
and a cursor outside its declared range or in the wrong unit are a 422 naming the TOML path
(``wards.NEPHRO-1.cursors.k_max``), the value and the range (and the line and column of a TOML
text). Each accepted change is a new version (``site_config_version``: the TOML text, who, when,
the comment), written in one transaction with its audit entry, which lists what changed; the
same text as the latest version is not a change (answered with that version). ``base_version``
makes the change conditional: 409 when another version was saved meanwhile.

A saved version is in force when the answer comes: the CDS Hooks services answer with it, and
the live worklist has evaluated every patient again with it (``LiveWorklist.configure``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from vigie.api.auth import Caller, RuleAuthor, require
from vigie.api.routes.rules import (
    ParamPublic,
    Text,
    body_schema,
    read_body,
    service_packs,
    too_deep,
)
from vigie.engine.site_config import (
    SiteConfig,
    SiteConfigError,
    SiteConfigErrors,
    WardSettings,
    parse_site_config,
)
from vigie.store import ServiceStore, UnknownResourceError
from vigie.store.service import ConfigVersion

__all__ = [
    "ConfigBody",
    "ConfigPublic",
    "ConfigVersionPublic",
    "EffectiveSettings",
    "router",
    "to_toml",
]

router = APIRouter(prefix="/config", tags=["config"])
log = logging.getLogger("vigie.api")

ConfigReader = Annotated[Caller, require("rule_author", "pharmacist")]
CONFIG_FILE = "site-config.toml"  # the file name the errors of a TOML text give
TEXT_MAX = 1024 * 1024
VERSION_MAX = 2**31 - 1  # a version number the databases' integers hold
TOML_TYPES = ("application/toml", "text/plain")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


# Shapes ------------------------------------------------------------------------------------------


class ConfigBody(BaseModel):
    """A new site configuration: ``config`` (the TOML tables as JSON) or ``text`` (TOML)."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] | None = Field(
        default=None,
        description='{"hospital": {"packs", "level", "enable", "disable", "cursors"}, '
        '"wards": {"CODE": {...}}}',
    )
    text: Text | None = Field(default=None, max_length=TEXT_MAX, description="the TOML text")
    comment: str | None = Field(default=None, max_length=2000, description="why the change")
    base_version: int | None = Field(
        default=None,
        ge=1,
        le=VERSION_MAX,
        description="the version this change starts from (409 if not last)",
    )

    @model_validator(mode="after")
    def one_form(self) -> ConfigBody:
        if (self.config is None) == (self.text is None):
            raise ValueError("give the configuration as config (JSON) or text (TOML), not both")
        return self


class EffectiveSettings(BaseModel):
    """What a ward runs once the hospital section and the ward's are combined."""

    packs: list[str] | None = Field(description="the packs on (null: every pack)")
    level: int
    enable: list[str]
    disable: list[str]
    cursors: dict[str, float] = Field(description="cursor values, in each one's declared unit")


class ConfigVersionPublic(BaseModel):
    version: int
    sha256: str
    author: str
    comment: str | None
    created_at: datetime


class ConfigPublic(BaseModel):
    """A version of the site configuration (``version`` null: none saved yet, the packs'
    defaults apply), checked against the packs the service runs now (``problem`` says why a
    stored version no longer checks), with the cursors the packs declare."""

    version: int | None
    sha256: str | None
    author: str | None
    comment: str | None
    created_at: datetime | None
    text: str
    config: dict[str, Any]
    problem: str | None
    hospital: EffectiveSettings | None
    wards: dict[str, EffectiveSettings]
    cursors: list[ParamPublic] = Field(description="the cursors of the packs, with their ranges")
    unchanged: bool = Field(default=False, description="a PUT of the latest version's text")


# Reading -----------------------------------------------------------------------------------------


def _effective(settings: WardSettings) -> EffectiveSettings:
    return EffectiveSettings(
        packs=sorted(settings.packs) if settings.packs is not None else None,
        level=settings.level,
        enable=sorted(settings.enable),
        disable=sorted(settings.disable),
        cursors=dict(sorted(settings.cursors.items())),
    )


def _public(
    request: Request, version: ConfigVersion | None, unchanged: bool = False
) -> ConfigPublic:
    known = service_packs(request)
    cursors = [param for pack in known.packs for param in pack.params]
    text = version.text if version else ""
    problem: str | None = None
    checked: SiteConfig | None = None
    try:
        config: dict[str, Any] = tomllib.loads(text)
        checked = parse_site_config(text, CONFIG_FILE, known.irs)
    except tomllib.TOMLDecodeError as error:
        config, problem = {}, f"not valid TOML: {error}"
    except SiteConfigError as error:
        problem = str(error)
    return ConfigPublic(
        version=version.version if version else None,
        sha256=version.sha256 if version else None,
        author=version.author if version else None,
        comment=version.comment if version else None,
        created_at=version.created_at if version else None,
        text=text,
        config=config,
        problem=problem,
        hospital=_effective(checked.for_ward(None)) if checked else None,
        wards={ward: _effective(checked.for_ward(ward)) for ward in checked.wards}
        if checked
        else {},
        cursors=cursors,
        unchanged=unchanged,
    )


@router.get(
    "/cursors", response_model=ConfigPublic, summary="The site configuration (cursors) in force"
)
def get_cursors(
    request: Request,
    caller: ConfigReader,
    version: Annotated[
        int | None, Query(ge=1, le=VERSION_MAX, description="a past version")
    ] = None,
) -> ConfigPublic:
    """The latest version of the site configuration (or ``version``): its TOML text, the same
    as JSON, the settings each ward runs, who saved it and when, and the cursors the packs
    declare with their ranges."""
    found = caller.service.site_config(version)
    if found is None and version is not None:
        raise UnknownResourceError(f"no version {version} of the site configuration")
    return _public(request, found)


@router.get(
    "/cursors/versions",
    response_model=list[ConfigVersionPublic],
    summary="The versions of the site configuration",
)
def get_cursor_versions(caller: ConfigReader) -> list[ConfigVersionPublic]:
    """Every version, latest first: number, hash, who saved it, when, and why."""
    return [
        ConfigVersionPublic(
            version=v.version,
            sha256=v.sha256,
            author=v.author,
            comment=v.comment,
            created_at=v.created_at,
        )
        for v in reversed(caller.service.site_config_versions())
    ]


# Changing ----------------------------------------------------------------------------------------


class _Unwritable(ValueError):
    """A JSON value a TOML file cannot hold (null, an unpaired surrogate)."""

    def __init__(self, path: Sequence[str | int], message: str) -> None:
        super().__init__(message)
        self.path = tuple(path)


def to_toml(data: Mapping[str, Any]) -> str:
    """The TOML text of a JSON object (tables as ``[headers]``, lists of tables inline).

    >>> print(to_toml({"hospital": {"level": 2, "cursors": {"k_max": 6.0}},
    ...                "wards": {"CARDIO 1": {"disable": ["a.b"]}}}), end="")
    [hospital]
    level = 2
    [hospital.cursors]
    k_max = 6.0
    [wards."CARDIO 1"]
    disable = ["a.b"]
    """
    lines: list[str] = []

    def table(path: tuple[str, ...], mapping: Mapping[str, Any]) -> None:
        scalars = [(k, v) for k, v in mapping.items() if not isinstance(v, Mapping)]
        tables = [(k, v) for k, v in mapping.items() if isinstance(v, Mapping)]
        if path and (scalars or not tables):
            lines.append(f"[{'.'.join(_key(part, path) for part in path)}]")
        for key, value in scalars:
            lines.append(f"{_key(key, (*path, key))} = {_value(value, (*path, key))}")
        for key, value in tables:
            table((*path, key), value)

    table((), data)
    return "".join(line + "\n" for line in lines)


def _key(key: str, path: Sequence[str | int]) -> str:
    return key if _BARE_KEY.match(key) else _string(key, path)


def _string(text: str, path: Sequence[str | int]) -> str:
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0xD800 <= code <= 0xDFFF:
            raise _Unwritable(path, "a string with an unpaired surrogate is not Unicode text")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _value(value: Any, path: Sequence[str | int]) -> str:
    if value is None:
        raise _Unwritable(path, "null is not a value of the configuration (leave the key out)")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if value != value else repr(value))
    if isinstance(value, str):
        return _string(value, path)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item, (*path, i)) for i, item in enumerate(value)) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(
            f"{_key(k, (*path, k))} = {_value(v, (*path, k))}" for k, v in value.items()
        )
        return "{" + items + "}"
    raise _Unwritable(path, f"a {type(value).__name__} is not a value of the configuration")


def _field(prefix: str, path: Sequence[str | int] | str | None) -> str:
    if path is None or path == "" or path == ():
        return prefix
    if isinstance(path, str):
        return f"{prefix}.{path}"
    shown = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    return prefix + shown


def _problem(
    detail: str, field: str, line: int | None = None, column: int | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"field": field, "message": detail}
    if line is not None:
        error.update(line=line, column=column)
    return error


def _refusal(detail: str, field: str, line: int | None = None, column: int | None = None) -> Any:
    return _refused([_problem(detail, field, line, column)])


def _refused(errors: Sequence[dict[str, Any]]) -> Any:
    """A 422 listing every problem; its ``detail`` names the first."""
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return JSONResponse(
        {
            "detail": f"invalid site configuration: {first['field']}: {first['message']}{more}",
            "errors": list(errors),
        },
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


def _flatten(data: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(data, Mapping) and data:
        for key, value in data.items():
            yield from _flatten(value, f"{path}.{key}" if path else str(key))
    else:
        yield path, data


def _changes(before: str, after: str) -> list[dict[str, Any]]:
    """What changed, by TOML path: ``{"path", "from", "to"}`` (absent: null)."""
    try:
        old = dict(_flatten(tomllib.loads(before))) if before else {}
    except tomllib.TOMLDecodeError:
        old = {}
    new = dict(_flatten(tomllib.loads(after)))
    return [
        {"path": path, "from": _plain(old.get(path)), "to": _plain(new.get(path))}
        for path in sorted(old.keys() | new.keys())
        if old.get(path) != new.get(path)
    ]


def _plain(value: Any) -> Any:
    """A value as JSON can hold it (TOML dates as ISO text)."""
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


@router.put(
    "/cursors",
    response_model=ConfigPublic,
    summary="Save a new version of the site configuration",
    responses={
        409: {"description": "base_version is not the latest version"},
        422: {"description": "the configuration does not check against the packs"},
    },
    openapi_extra=body_schema(
        ConfigBody, TOML_TYPES, "the TOML text (comment and base_version in the query)"
    ),
)
async def put_cursors(
    request: Request,
    caller: RuleAuthor,
    comment: Annotated[
        str | None, Query(max_length=2000, description="with a TOML body: why the change")
    ] = None,
    base_version: Annotated[
        int | None,
        Query(ge=1, le=VERSION_MAX, description="with a TOML body: the version changed"),
    ] = None,
) -> Any:
    """Checks the configuration against the packs the service runs, then saves it as a new
    version with its audit entry (what changed, by TOML path). A cursor outside its declared
    range is a 422 naming the cursor, the value and the range."""
    body = await read_body(request, ConfigBody, TOML_TYPES)
    prefix = "body.config"
    if isinstance(body, str):
        body = ConfigBody.model_construct(
            config=None, text=body, comment=comment, base_version=base_version
        )
        prefix = "body"
    elif body.text is not None:
        prefix = "body.text"
    if body.config is not None:
        try:
            text = to_toml(body.config)
        except _Unwritable as error:
            return _refusal(str(error), _field(prefix, error.path))
    else:
        text = body.text or ""
    if "\x00" in text:
        return _refusal("a NUL character is not allowed in the text", prefix)
    try:
        site = parse_site_config(text, CONFIG_FILE, service_packs(request).irs)
    except RecursionError:
        raise too_deep(prefix) from None
    except SiteConfigError as error:
        # every problem of the file; lines and columns only where the caller wrote the text
        problems = error.errors if isinstance(error, SiteConfigErrors) else (error,)
        return _refused(
            [
                _problem(p.detail, _field(prefix, p.path))
                if body.config is not None
                else _problem(p.detail, _field(prefix, p.path), p.line, p.column)
                for p in problems
            ]
        )
    service: ServiceStore = caller.service
    latest = service.site_config()
    if body.base_version is not None and (latest is None or latest.version != body.base_version):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"the configuration changed since version {body.base_version}: the latest "
            f"is {latest.version if latest else 'none'}; start again from it",
        )
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if latest is not None and latest.sha256 == digest:
        return _public(request, latest, unchanged=True)
    changes = _changes(latest.text if latest else "", text)
    entry = caller.entry(
        "write",
        "site configuration",
        detail={
            "sha256": digest,
            "base_version": latest.version if latest else None,
            "comment": body.comment,
            "changes": changes[:100],
            "changed": len(changes),
        },
    )
    saved = service.save_site_config(text, caller.user.name, body.comment, audit=entry)
    site = dataclasses.replace(site, file=f"site configuration version {saved.version}")
    await _apply(request, site, saved.version)
    return _public(request, saved)


async def _apply(request: Request, site: SiteConfig, version: int) -> None:
    """The saved version in force at once (``app.state.apply_site_config``): the CDS Hooks
    services answer with it, and the live worklist evaluates every patient again with it."""
    apply = getattr(request.app.state, "apply_site_config", None)
    if apply is None:
        return
    try:
        await run_in_threadpool(apply, site)
    except Exception as error:  # logged by class only, answered without its text
        log.error("the saved site configuration could not be applied: %s", type(error).__name__)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"version {version} is saved but the live worklist could not apply it "
            f"({error.__class__.__name__}); it applies at the latest when the service starts again",
        ) from None
