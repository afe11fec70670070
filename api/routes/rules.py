"""``GET /rules`` (the packs the service runs, their versions and rules), ``POST /rules/check``
(a pack's text → the compiler's diagnostics) and ``POST /rules/test`` (a pack's text and rule
test cases → pass or fail per case, with the differences): the rule author's tools.

Who: ``GET /rules`` is open to rule authors and pharmacists (a pharmacist reads the rule behind
an alert and the cursors in force; nothing there is patient data); checking and testing a pack
is the rule author's. None of these touches patient data, so reads are not audited.

The packs the service runs are ``refresh_worklist``'s: the shipped default and ANSM packs, or
the pack files of ``app.state.pack_paths`` when the app sets them. They are compiled once per
process and pack file version (the batch's compile cache makes that fast), and listed with the
versions the store recorded (``rule_pack_version``: every pack text an evaluation ran).

``POST /rules/check`` and ``/rules/test`` never store what they are given. A pack that does not
compile is an answer (200 with its diagnostics), not an error; a body that is not text (not
UTF-8, not JSON of the documented shape, another media type) is a 4xx. The test cases are the
YAML of ``vigie rules test`` (docs/rules.md, "Testing rules"); their ``packs`` may only name the
pack posted (it is the one tested), never a file of the server.
"""

from __future__ import annotations

import tempfile
import threading
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from vigie import rules
from vigie.api.auth import Caller, RuleAuthor, require
from vigie.api.routes.schemas import CodedValue
from vigie.errors import VigieError
from vigie.rules.testing.cases import CaseFileError, load_test_file
from vigie.rules.testing.runner import PackCache, coverage_gaps, run_case
from vigie.store import ServiceError, ServiceStore
from vigie.store.service import RulePackVersionRow

__all__ = [
    "CheckAnswer",
    "DiagnosticPublic",
    "PackPublic",
    "PackText",
    "ParamPublic",
    "RulePublic",
    "RuleTestBody",
    "RulesPage",
    "ServicePacks",
    "TestAnswer",
    "Text",
    "read_body",
    "router",
    "service_packs",
    "too_deep",
]

router = APIRouter(prefix="/rules", tags=["rules"])

# A reader of the rules: a rule author, or a pharmacist looking at the rule behind an alert.
RuleReader = Annotated[Caller, require("rule_author", "pharmacist")]

Severity = Literal["critical", "major", "moderate", "minor"]
TEXT_MAX = 8 * 1024 * 1024  # characters of a pack or test file (the ANSM pack is 1.1 million)
MAX_CASES = 2000  # rule test cases per request (the shipped test files hold up to 117)
_FILE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


def _unicode(text: str) -> str:
    """Refuse an unpaired surrogate (JSON's ``\\ud800``): not text, and not UTF-8 writable."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"not Unicode text (an unpaired surrogate at {error.start})") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]


# The packs the service runs ----------------------------------------------------------------------


class ParamPublic(BaseModel):
    """A cursor: a pack's ``param NAME = DEFAULT in LOW .. HIGH "label"``."""

    name: str
    pack: str
    value: float = Field(description="the pack's default, in ``unit``")
    unit: str | None
    dimension: str | None
    min: float
    max: float
    label: str | None
    file: str | None
    line: int | None


class RulePublic(BaseModel):
    id: str
    pack: str
    version: int
    title: str
    severity: str
    level: int
    problem: CodedValue | None
    intervention: CodedValue | None
    reference: str | None
    file: str | None
    line: int | None
    params: list[ParamPublic] = Field(description="the cursors the rule reads")


class RecordedVersion(BaseModel):
    """A version of the pack an evaluation ran, as the store recorded it."""

    version: str
    sha256: str
    source: str
    first_used: datetime


class PackPublic(BaseModel):
    name: str
    version: str
    sha256: str
    file: str
    rules: int
    params: list[ParamPublic]
    recorded: list[RecordedVersion] = Field(
        description="the versions of this pack the store recorded, oldest first"
    )


class RulesPage(BaseModel):
    """The packs, and one page of their rules (``total`` match the filters)."""

    packs: list[PackPublic]
    total: int
    offset: int
    limit: int
    items: list[RulePublic]


@dataclass(frozen=True)
class ServicePacks:
    """The compiled packs the service runs, and their public views."""

    irs: tuple[dict[str, Any], ...]
    packs: tuple[PackPublic, ...]  # without ``recorded`` (read from the store per request)
    rules: tuple[RulePublic, ...]
    search: tuple[str, ...]  # per rule: its id and title folded for ``q``


_cache: dict[tuple[Any, ...], ServicePacks] = {}
_cache_lock = threading.Lock()


def _pack_files(pack_paths: Sequence[Path]) -> list[Path]:
    from vigie.api.batch import DEFAULT_PACKS

    if pack_paths:
        return [Path(p) for p in pack_paths]
    folder = Path(rules.__file__).parent / "packs"
    return [folder / name for name in DEFAULT_PACKS]


def service_packs(request: Request) -> ServicePacks:
    """The packs of the app serving ``request`` (``app.state.pack_paths``, default: the shipped
    default and ANSM packs), compiled once per process and version of their files."""
    from vigie.api.batch import compile_packs

    pack_paths: Sequence[Path] = tuple(getattr(request.app.state, "pack_paths", ()) or ())
    key: list[Any] = [tuple(map(str, pack_paths))]
    for path in _pack_files(pack_paths):
        try:
            found = path.stat()
        except OSError:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                detail=f"the service's rule pack {path.name} cannot be read",
            ) from None
        key.append((found.st_mtime_ns, found.st_size))
    with _cache_lock:
        cached = _cache.get(tuple(key))
        if cached is None:
            try:
                compiled = compile_packs(pack_paths)
            except VigieError as error:  # the server's packs, not the request, are wrong
                raise HTTPException(
                    status.HTTP_503_SERVICE_UNAVAILABLE,
                    detail=f"the service's rule packs cannot be loaded: {error}",
                ) from None
            cached = _describe(compiled)
            _cache.clear()
            _cache[tuple(key)] = cached
    return cached


def _describe(irs: Sequence[dict[str, Any]]) -> ServicePacks:
    packs: list[PackPublic] = []
    found: list[RulePublic] = []
    for ir in irs:
        header = ir["pack"]
        params = {name: _param(header["name"], name, spec) for name, spec in ir["params"].items()}
        packs.append(
            PackPublic(
                name=header["name"],
                version=str(header["version"]),
                sha256=header.get("sha256") or "",
                file=header.get("file") or "",
                rules=len(ir["rules"]),
                params=list(params.values()),
                recorded=[],
            )
        )
        for rule in ir["rules"]:
            source = rule.get("source") or {}
            used = sorted(set(_params_read(rule)) & set(params))
            found.append(
                RulePublic(
                    id=rule["id"],
                    pack=header["name"],
                    version=int(rule.get("version", 1)),
                    title=rule.get("title") or "",
                    severity=rule.get("severity") or "",
                    level=int(rule.get("level", 1)),
                    problem=_coded(rule.get("problem")),
                    intervention=_coded(rule.get("intervention")),
                    reference=rule.get("reference"),
                    file=source.get("file"),
                    line=source.get("line"),
                    params=[params[name] for name in used],
                )
            )
    search = tuple(_fold(f"{rule.id} {rule.title}") for rule in found)
    return ServicePacks(tuple(irs), tuple(packs), tuple(found), search)


def _param(pack: str, name: str, spec: Mapping[str, Any]) -> ParamPublic:
    source = spec.get("source") or {}
    return ParamPublic(
        name=name,
        pack=pack,
        value=float(spec["value"]),
        unit=spec.get("unit"),
        dimension=spec.get("dimension"),
        min=float(spec["min"]),
        max=float(spec["max"]),
        label=spec.get("label"),
        file=source.get("file"),
        line=source.get("line"),
    )


def _params_read(node: Any) -> Iterator[str]:
    """The names of the parameters an IR node reads (``{"op": "param", "name": ...}``)."""
    if isinstance(node, dict):
        if node.get("op") == "param" and isinstance(node.get("name"), str):
            yield node["name"]
        for value in node.values():
            yield from _params_read(value)
    elif isinstance(node, list):
        for value in node:
            yield from _params_read(value)


def _coded(value: Any) -> CodedValue | None:
    if isinstance(value, dict) and value.get("code"):
        return CodedValue(code=str(value["code"]), display=str(value.get("display") or ""))
    return None


def _fold(text: str) -> str:
    """Lower case without accents, for ``q``."""
    plain = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in plain if not unicodedata.combining(c))


def _recorded(service: ServiceStore) -> dict[str, list[RecordedVersion]]:
    """The pack versions the store recorded (``rule_pack_version``, without their text)."""
    query = select(
        RulePackVersionRow.name,
        RulePackVersionRow.version,
        RulePackVersionRow.sha256,
        RulePackVersionRow.source,
        RulePackVersionRow.first_used,
    ).order_by(RulePackVersionRow.id)
    found: dict[str, list[RecordedVersion]] = {}
    try:
        with service.facts.session() as session:
            for name, version, sha256, source, first_used in session.execute(query):
                found.setdefault(name, []).append(
                    RecordedVersion(
                        version=version, sha256=sha256, source=source, first_used=first_used
                    )
                )
    except SQLAlchemyError as error:
        raise ServiceError(f"cannot read the rule packs: {error.__class__.__name__}") from error
    return found


@router.get("", response_model=RulesPage, summary="The rule packs the service runs, and rules")
def get_rules(
    request: Request,
    caller: RuleReader,
    pack: Annotated[
        str | None, Query(max_length=128, description="a pack's name or file name")
    ] = None,
    q: Annotated[
        str | None,
        Query(max_length=200, description="words of the rule's id or title (any case, accents)"),
    ] = None,
    severity: Annotated[list[Severity] | None, Query(description="one or more")] = None,
    level: Annotated[int | None, Query(ge=1, le=100, description="rules of this level")] = None,
    limit: Annotated[int, Query(ge=1, le=2000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> RulesPage:
    """Every pack the service runs (name, version, hash, file, cursors with their ranges, the
    versions the store recorded), and a page of their rules in pack order: id, version,
    title, severity, level, SFPC problem and intervention, reference, source file and line,
    and the cursors each reads. ``pack``, ``q`` (every word must appear in the id or title),
    ``severity`` and ``level`` filter the rules; ``limit`` and ``offset`` page through them."""
    known = service_packs(request)
    recorded = _recorded(caller.service)
    packs = [p.model_copy(update={"recorded": recorded.get(p.name, [])}) for p in known.packs]
    chosen: str | None = None
    if pack is not None:
        match = [p.name for p in packs if pack in (p.name, p.file, Path(p.file).name)]
        if not match:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                detail=f"no pack {pack!r}; the service runs {', '.join(p.name for p in packs)}",
            )
        chosen = match[0]
    words = _fold(q).split() if q else []
    selected = [
        rule
        for rule, text in zip(known.rules, known.search, strict=True)
        if (chosen is None or rule.pack == chosen)
        and (not severity or rule.severity in severity)
        and (level is None or rule.level == level)
        and all(word in text for word in words)
    ]
    return RulesPage(
        packs=packs,
        total=len(selected),
        offset=offset,
        limit=limit,
        items=selected[offset : offset + limit],
    )


# Bodies ------------------------------------------------------------------------------------------


class PackText(BaseModel):
    """A pack's text, and the file name its diagnostics give."""

    model_config = ConfigDict(extra="forbid")

    text: Text = Field(max_length=TEXT_MAX, description="the pack's text (the rule language)")
    file: str = Field(
        default="pack.rules",
        pattern=_FILE_PATTERN,
        description="the file name the diagnostics name (letters, digits, . _ -)",
    )


Model = TypeVar("Model", bound=BaseModel)
JSON_TYPES = ("application/json",)
TEXT_TYPES = ("text/plain",)


async def read_body(request: Request, model: type[Model], text_types: Sequence[str]) -> Model | str:
    """The request's body: a ``model`` from JSON, or a text when its media type is one of
    ``text_types``; 415 for another media type, 400 for a text that is not UTF-8, 422 (naming
    the field) for JSON of another shape."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if media in JSON_TYPES:
        try:
            return model.model_validate_json(body)
        except ValidationError as error:
            raise _invalid(error) from None
    if media in text_types:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as error:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                detail=f"the body is not UTF-8 text (byte {error.start} cannot be read)",
            ) from None
    raise HTTPException(
        status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        detail=f"send {' or '.join((*JSON_TYPES, *text_types))}, not {media or 'no media type'}",
    )


def _invalid(error: ValidationError) -> Exception:
    from fastapi.exceptions import RequestValidationError

    return RequestValidationError(
        [{**item, "loc": ("body", *item.get("loc", ()))} for item in error.errors()]
    )


def body_schema(model: type[BaseModel], text_types: Sequence[str], text: str) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a route reading ``read_body``."""
    content: dict[str, Any] = {"application/json": {"schema": model.model_json_schema()}}
    for media in text_types:
        content[media] = {"schema": {"type": "string", "description": text}}
    return {"requestBody": {"required": True, "content": content}}


# Check -------------------------------------------------------------------------------------------


class DiagnosticPublic(BaseModel):
    code: str = Field(description="R001 ... (docs/rules.md, 'Diagnostics')")
    severity: Literal["error", "warning"]
    message: str
    file: str
    line: int
    column: int
    end_line: int
    end_column: int
    hint: str | None
    rendered: str = Field(description="as ``vigie rules check`` prints it: line and carets")


class PackHeader(BaseModel):
    name: str
    version: str
    sha256: str


class CheckAnswer(BaseModel):
    """``ok`` when the pack compiles (warnings allowed); its diagnostics in source order."""

    file: str
    ok: bool
    errors: int
    warnings: int
    rules: int = Field(description="rules compiled (0 when the pack does not compile)")
    pack: PackHeader | None
    diagnostics: list[DiagnosticPublic]


def _diagnostics(diagnostics: Sequence[rules.Diagnostic], source: str) -> list[DiagnosticPublic]:
    return [
        DiagnosticPublic(
            code=d.code,
            severity=d.severity,
            message=d.message,
            file=d.span.file,
            line=d.span.line,
            column=d.span.column,
            end_line=d.span.end_line,
            end_column=d.span.end_column,
            hint=d.hint,
            rendered=rules.render(d, source),
        )
        for d in diagnostics
    ]


def _check(
    text: str, file: str
) -> tuple[CheckAnswer, dict[str, Any] | None, list[rules.Diagnostic]]:
    ir, diagnostics = rules.compile_pack(text, file)
    errors = sum(d.is_error for d in diagnostics)
    header = None
    if ir is not None:
        pack = ir["pack"]
        header = PackHeader(
            name=pack["name"], version=str(pack["version"]), sha256=pack.get("sha256") or ""
        )
    answer = CheckAnswer(
        file=file,
        ok=ir is not None,
        errors=errors,
        warnings=len(diagnostics) - errors,
        rules=len(ir["rules"]) if ir is not None else 0,
        pack=header,
        diagnostics=_diagnostics(diagnostics, text),
    )
    return answer, ir, diagnostics


@router.post(
    "/check",
    response_model=CheckAnswer,
    summary="Compile a pack's text and give every diagnostic",
    openapi_extra=body_schema(
        PackText, TEXT_TYPES, "the pack's text (its file name: ?file=, default pack.rules)"
    ),
)
async def post_check(
    request: Request,
    caller: RuleAuthor,
    file: Annotated[
        str,
        Query(pattern=_FILE_PATTERN, description="with a text/plain body: the pack's file name"),
    ] = "pack.rules",
) -> CheckAnswer:
    """The compiler's diagnostics (``vigie rules check``): severity, code, message, file,
    line and column, hint. A pack that does not compile is an answer (``ok`` false), not an
    error. The body is JSON ``{"text": ..., "file": "name.rules"}`` or the text itself
    (``text/plain``, UTF-8; the name in ``?file=``). Nothing is stored."""
    body = await read_body(request, PackText, TEXT_TYPES)
    given = body if isinstance(body, PackText) else PackText.model_construct(text=body, file=file)
    answer, _, _ = await run_in_threadpool(_check, given.text, given.file)
    return answer


# Test --------------------------------------------------------------------------------------------


class RuleTestBody(BaseModel):
    """A pack's text and a rule test file testing it."""

    model_config = ConfigDict(extra="forbid")

    text: Text = Field(max_length=TEXT_MAX, description="the pack's text")
    file: str = Field(default="pack.rules", pattern=_FILE_PATTERN)
    cases: Text = Field(
        max_length=TEXT_MAX,
        description="the test file (YAML of ``vigie rules test``, docs/rules.md 'Testing "
        "rules'); its ``packs``, if given, names only ``file``",
    )
    cases_file: str = Field(default="cases.yaml", pattern=_FILE_PATTERN)


class AlertBrief(BaseModel):
    rule_id: str
    severity: str
    message: str
    drugs: list[str]


class CaseAnswer(BaseModel):
    name: str
    rule: str | None
    line: int | None
    status: Literal["PASS", "FAIL", "ERROR"]
    error: str | None
    diff: list[str] = Field(description="``- missing``, ``+ unexpected``, ``~ field`` lines")
    alerts: list[AlertBrief]


class TestAnswer(BaseModel):
    """``ok`` as ``vigie rules test``: every case passes and every rule of the pack has a
    firing and a non-firing case (``uncovered`` lists those that lack one)."""

    __test__ = False  # not a pytest class

    file: str
    cases_file: str
    compiled: bool
    diagnostics: list[DiagnosticPublic]
    passed: int
    failed: int
    errors: int
    cases: list[CaseAnswer]
    uncovered: dict[str, list[str]]
    ok: bool


def _cases_text(cases: str, file: str) -> str:
    """The test file to run: its ``packs`` may only name the pack posted (``file``); without
    ``packs`` that pack is added. A test file naming another pack is a 422: a test through the
    service never reads the server's files."""
    try:
        document = yaml.safe_load(cases)
    except yaml.YAMLError:
        return cases  # the loader reports it with its line
    except RecursionError:
        raise too_deep("cases") from None
    if not isinstance(document, dict):
        return cases  # the loader reports it
    if "packs" not in document:
        added = cases.rstrip("\n") + f'\npacks: "{file}"\n'
        try:
            if isinstance(yaml.safe_load(added), dict):
                return added
        except yaml.YAMLError:
            pass
        return cases  # a flow mapping: the loader asks for ``packs``
    refs = document["packs"]
    for ref in refs if isinstance(refs, list) else [refs]:
        named = ref.get("path") if isinstance(ref, dict) else ref
        if named != file:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=f"cases: packs names {named!r}: a test through the service tests the pack "
                f"posted; name it {file!r} or leave packs out",
            )
    return cases


def too_deep(field: str) -> HTTPException:
    """A text nested deeper than its parser recurses (``[[[[...``, ``not not not ...``): a
    422, not a crash."""
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=f"{field}: nested too deeply to be read (lists, tables or expressions within "
        "each other)",
    )


def _run_tests(body: RuleTestBody) -> TestAnswer:
    checked, ir, diagnostics = _check(body.text, body.file)
    with tempfile.TemporaryDirectory(prefix="vigie-rules-test-") as folder:
        pack_path = Path(folder) / body.file
        pack_path.write_text(body.text, encoding="utf-8")
        cases_path = Path(folder) / ".cases.yaml"  # no pack file is named so
        cases_path.write_text(_cases_text(body.cases, body.file), encoding="utf-8")
        try:
            loaded = load_test_file(cases_path, shown=body.cases_file)
        except CaseFileError as error:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"cases: {error}"
            ) from None
        except RecursionError:
            raise too_deep("cases") from None
        if len(loaded.cases) > MAX_CASES:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=f"cases: {len(loaded.cases):,} cases; at most {MAX_CASES:,} per request",
            )
        cache = PackCache()
        compiled = rules.CompiledPack(body.file, body.text, ir, tuple(diagnostics))
        cache.preload(pack_path, compiled)
        results = [run_case(case, cache) for case in loaded.cases]
        uncovered = coverage_gaps([loaded], [pack_path], cache) if ir is not None else {}
    cases = [
        CaseAnswer(
            name=r.case.name,
            rule=r.case.rule,
            line=r.case.line,
            status=r.status,
            error=r.error,
            diff=r.diff,
            alerts=[
                AlertBrief(
                    rule_id=a.rule_id,
                    severity=a.severity,
                    message=a.message,
                    drugs=sorted(d.order_id for d in a.drugs),
                )
                for a in r.alerts
            ],
        )
        for r in results
    ]
    counts = {s: sum(c.status == s for c in cases) for s in ("PASS", "FAIL", "ERROR")}
    return TestAnswer(
        file=body.file,
        cases_file=body.cases_file,
        compiled=ir is not None,
        diagnostics=checked.diagnostics,
        passed=counts["PASS"],
        failed=counts["FAIL"],
        errors=counts["ERROR"],
        cases=cases,
        uncovered=uncovered,
        ok=ir is not None and counts["PASS"] == len(cases) and not uncovered,
    )


@router.post("/test", response_model=TestAnswer, summary="Run rule test cases against a pack")
def post_test(body: RuleTestBody, caller: RuleAuthor) -> TestAnswer:
    """Compiles the pack, builds each case's facts as a feed would, evaluates and compares
    (``vigie rules test``): PASS, FAIL with the differences (``- missing``, ``+ unexpected``,
    ``~ field: expected ..., got ...``) or ERROR (the pack does not compile, a cursor out of
    range...), and the rules lacking a firing or non-firing case. A malformed test file is a
    422 naming its line, case and key. Nothing is stored."""
    return _run_tests(body)
