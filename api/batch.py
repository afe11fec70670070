"""``vigie batch``: the nightly run. Feeds are read in memory (no store), every patient in
scope is evaluated by the packs as of one time, and the alerts are written in the output
contract of ARCHITECTURE.md (JSON, or Parquet when the output file ends with ``.parquet``).

Scope ``inpatients`` (the default) is every patient with a stay whose period (admission up to
discharge, a cancelled stay excepted) contains the evaluation time: periods, not the statuses a
feed sends today, decide who was in, so a past date replays correctly. Scope ``all`` is every
patient of the input.

Alerts come in worklist order (``vigie.engine.priority.worklist``: priority score, highest
first), each with its ``priority``.

Output. JSON: ``{"as_of", "rule_pack": {"name", "version", "sha256"}, "rule_packs": [...],
"alerts": [...], "summary": {...}}``; with several packs ``rule_pack`` joins their names and
versions with ``+`` and its ``sha256`` hashes theirs in order, ``rule_packs`` lists each one.
An alert is ``Alert.model_dump(mode="json")`` (the contract's fields and a few more: ``rule``,
``level``, ``as_of``, each evidence's ``name``, ``fact_id`` and ``inputs``). Parquet: one row per
alert, the same fields; scalars as columns, the nested ones (``rule``, ``problem``,
``intervention``, ``drugs``, ``evidence``, ``thresholds``) as JSON text in the same form as the
JSON file, so both read back to the same alerts.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl
from platformdirs import user_cache_dir

from vigie import rules, settings
from vigie.engine.alerts import Alert
from vigie.engine.columnar import evaluate_columnar, in_stay, patients_of, records_from_frames
from vigie.engine.evaluate import normalise_time
from vigie.engine.factset import FactSet, PatientRecord
from vigie.engine.load import LoadedPack, load_pack
from vigie.engine.priority import worklist
from vigie.engine.site_config import SiteConfig, load_site_config
from vigie.errors import VigieError
from vigie.facts import AnyFact, LabResult
from vigie.ingest import FileReport, read_feed
from vigie.store import FactStore, ServiceStore
from vigie.store.columns import load_frames
from vigie.store.parquet import is_frames_directory, read_frames
from vigie.store.service import RulePackVersion
from vigie.terminology.units import default_unit_tables

__all__ = [
    "DEFAULT_PACKS",
    "SEVERITY_RANK",
    "BatchError",
    "BatchResult",
    "FeedNotes",
    "compile_packs",
    "load_feeds",
    "load_packs",
    "pack_texts",
    "parse_time",
    "read_parquet_alerts",
    "read_parquet_header",
    "record_packs",
    "run_packs",
    "write_output",
]

DEFAULT_PACKS = ("default.rules", "ansm-interactions.rules")
SEVERITY_RANK = {"critical": 0, "major": 1, "moderate": 2, "minor": 3}
NESTED = ("rule", "problem", "intervention", "drugs", "evidence", "thresholds")


class BatchError(VigieError):
    """A problem stopping the batch before any evaluation; ``usage`` says which exit code."""

    def __init__(self, message: str, *, usage: bool) -> None:
        super().__init__(message)
        self.usage = usage


def parse_time(text: str) -> datetime:
    """An ISO 8601 time (``1980-07-16T21:00Z``, ``2025-01-08T06:00+01:00``, a date); a time
    without offset is UTC, as fact times are."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO 8601 time (expected e.g. 1980-07-16T21:00Z)"
        ) from None
    return normalise_time(moment)


# Feeds -------------------------------------------------------------------------------------------


@dataclass
class FeedNotes:
    """What reading the feeds found besides facts: files, messages, errors with their position,
    and unit labels accepted only in feeds (Synthea's eGFR in plain ``mL/min``)."""

    files: list[FileReport] = field(default_factory=list)
    messages: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    # (concept, unit as sent, canonical unit) -> [results, first position]
    relabelled: dict[tuple[str, str, str], list[Any]] = field(default_factory=dict)

    def unread(self) -> list[str]:
        return [f.rejected or f.unreadable or "" for f in self.files if f.rejected or f.unreadable]

    def relabelled_rows(self) -> list[dict[str, Any]]:
        return [
            {"concept": c, "unit_sent": sent, "read_as": unit, "results": n, "first": first}
            for (c, sent, unit), (n, first) in sorted(self.relabelled.items())
        ]


def _feed_only_labels() -> dict[tuple[str, str], str]:
    """(concept, unit as sent) -> canonical unit, for the ``use=feeds`` rows of the unit
    conversion table: labels accepted from data only, reported rather than taken silently."""
    tables = default_unit_tables()
    return {
        (row.concept, tables.aliases.get(row.from_unit, row.from_unit)): row.to_unit
        for row in tables.conversions
        if row.use == "feeds"
    }


def load_feeds(paths: Sequence[Path], fmt: str = "auto") -> tuple[FactSet, FeedNotes]:
    """Every fact of the feeds in memory; a bad message is noted with its position and the rest
    is read. Facts withdrawn by their sender (and not re-sent after) are left out."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise BatchError(f"no such file or folder: {', '.join(missing)}", usage=True)
    notes = FeedNotes()
    labels = _feed_only_labels()
    aliases = default_unit_tables().aliases
    facts: dict[tuple[str, str], AnyFact] = {}
    ordered: list[AnyFact] = []
    for parsed in read_feed(paths, fmt, notes.files):
        notes.messages[parsed.status] += 1
        if parsed.fatal is not None:
            notes.errors.append(str(parsed.fatal))
        if parsed.outcome is None:
            continue
        notes.errors.extend(str(error) for error in parsed.outcome.errors)
        for fact in parsed.outcome.facts:
            facts.pop((fact.kind, fact.fact_id), None)
            facts[(fact.kind, fact.fact_id)] = fact
        for retraction in parsed.outcome.retractions:
            facts.pop((retraction.kind, retraction.fact_id), None)
    ordered = list(facts.values())
    for fact in ordered:
        if isinstance(fact, LabResult) and fact.concept and fact.original_unit:
            sent = aliases.get(fact.original_unit, fact.original_unit)
            unit = labels.get((fact.concept, sent))
            if unit is not None and fact.unit == unit:
                entry = notes.relabelled.setdefault((fact.concept, sent, unit), [0, None])
                entry[0] += 1
                if entry[1] is None:
                    entry[1] = fact.source.describe()
    return FactSet(ordered), notes


# Packs -------------------------------------------------------------------------------------------


def load_inputs(
    inputs: Sequence[Path], fmt: str = "auto", store: str | None = None
) -> tuple[dict[str, pl.DataFrame], FeedNotes]:
    """The facts as frames: from a fact store (``store``: its URL, ``""`` for the configured
    one; read as columns by ``vigie.store.columns``, no object per fact), from a folder of fact
    frames in Parquet (``vigie.store.parquet``, read as columns; the only input then), or from
    feed files and folders (read by the connectors)."""
    try:
        if store is not None:
            if inputs:
                raise BatchError("give either --input or --store", usage=True)
            with FactStore(store or None) as opened:
                return load_frames(opened), FeedNotes()
        frames_dirs = [p for p in inputs if is_frames_directory(p)]
        if frames_dirs:
            if len(inputs) > 1:
                raise BatchError(
                    f"{frames_dirs[0]}: a folder of fact frames is read alone (the only --input)",
                    usage=True,
                )
            return read_frames(frames_dirs[0]), FeedNotes()
    except BatchError:
        raise
    except VigieError as error:
        raise BatchError(str(error), usage=False) from None
    facts, notes = load_feeds(inputs, fmt)
    return facts.frames(), notes


def load_packs(paths: Sequence[Path]) -> list[LoadedPack]:
    """The packs named (default: the shipped default and ANSM packs), compiled and loaded."""
    return [load_pack(ir) for ir in compile_packs(paths)]


def compile_packs(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The IR of the packs named (default: the shipped default and ANSM packs)."""
    return [_compiled(label, text) for label, text in pack_texts(paths)]


def pack_texts(paths: Sequence[Path]) -> list[tuple[str, str]]:
    """(the file the alerts name, the text) of each pack named (default: the shipped default
    and ANSM packs, named ``rules/packs/...`` wherever installed), in ``compile_packs``'s
    order; an unreadable file is a ``BatchError``."""
    named: list[tuple[str, str]] = []
    if not paths:
        for name in DEFAULT_PACKS:
            text = (Path(rules.__file__).parent / "packs" / name).read_text(encoding="utf-8")
            named.append((f"rules/packs/{name}", text))
    for path in paths:
        try:
            named.append((str(path), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as error:
            raise BatchError(f"{path}: cannot read the pack: {error}", usage=True) from None
    return named


def record_packs(store: FactStore, packs: Sequence[LoadedPack], paths: Sequence[Path]) -> None:
    """Record the text of each pack run (the packs of ``paths``, loaded), so that the alerts
    they raise show their rule's text and line (``rule_pack_version``)."""
    ServiceStore(store).record_rule_packs(
        [
            RulePackVersion(pack.name, pack.version, pack.sha256 or "", source, text)
            for pack, (source, text) in zip(packs, pack_texts(paths), strict=True)
        ]
    )


def _compiled(label: str, text: str) -> dict[str, Any]:
    """A pack's IR, from the compile cache when this text was compiled by this compiler before.

    Compiling the ANSM pack takes seconds (1,678 rules), more than evaluating a 3,000-bed
    hospital: the IR is kept in the user's cache folder under the hash of the pack's name and
    text and of everything the compiler reads (``rules/``, ``terminology/``, the IR schema, the
    site tables). A cached IR is checked again when loaded (``load_pack``)."""
    key = hashlib.sha256(
        "\x1f".join((label, text, _compiler_fingerprint())).encode("utf-8")
    ).hexdigest()
    cached = PACK_CACHE / f"{key}.json"
    try:
        found: dict[str, Any] = json.loads(cached.read_text(encoding="utf-8"))
        return found
    except (OSError, ValueError):
        pass  # not cached yet, or unreadable: compile
    ir, diagnostics = rules.compile_pack(text, label)
    if ir is None:
        errors = [d for d in diagnostics if d.is_error]
        raise BatchError(
            f"{label} does not compile ({len(errors)} error(s); run vigie rules check "
            f"{label}); first: {errors[0].headline() if errors else '?'}",
            usage=False,
        )
    try:
        PACK_CACHE.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(ir, ensure_ascii=False), encoding="utf-8")
        partial.replace(cached)  # atomic: a concurrent run reads a whole file or none
    except OSError:
        pass  # a read-only cache folder only costs the next run a compilation
    return dict(ir)


PACK_CACHE = Path(user_cache_dir("vigie")) / "packs"


@lru_cache(maxsize=1)
def _compiler_fingerprint() -> str:
    """A hash of every file the rule compiler reads: its code, grammar and tables, the
    terminology, the IR schema, and the site tables when set."""
    root = Path(rules.__file__).parent
    folders = [root, root.parent / "terminology"]
    site = settings.value("site_tables")
    if site is not None:
        folders.append(Path(site))
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    digest.update((root.parent / "ir_schema.py").read_bytes())
    return digest.hexdigest()


def load_config(path: Path, packs: Iterable[LoadedPack]) -> SiteConfig:
    if not path.exists():
        raise BatchError(f"no such configuration file: {path}", usage=True)
    return load_site_config(path, list(packs))


# Evaluation --------------------------------------------------------------------------------------


@dataclass
class BatchResult:
    as_of: datetime
    packs: list[LoadedPack]
    patients_in_input: int
    patients_evaluated: int
    alerts: list[Alert]
    seconds: float = 0.0


def in_scope(frames: Mapping[str, pl.DataFrame], as_of: datetime, scope: str) -> list[str]:
    """The patients to evaluate, by id: every one (``all``) or those in a stay at ``as_of``."""
    if scope == "all":
        return patients_of(frames).get_column("patient_id").to_list()
    return in_stay(frames, as_of)


def worklist_order(alerts: Iterable[Alert]) -> list[Alert]:
    """Priority first when known, then severity, rule, patient, identity."""
    return sorted(
        alerts,
        key=lambda a: (
            -(a.priority or 0.0),
            SEVERITY_RANK[a.severity],
            a.rule_id,
            a.patient_id,
            a.id,
        ),
    )


def run_packs(
    packs: Sequence[LoadedPack | Mapping[str, Any]],
    frames: Mapping[str, pl.DataFrame],
    as_of: datetime,
    patients: Sequence[str],
    site: SiteConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    engine: str = "local",
    records: dict[str, PatientRecord] | None = None,
) -> list[Alert]:
    """Every pack (loaded, or its IR) on the patients' facts as of a time, in worklist order
    (the columnar evaluator, ``vigie.engine.columnar``: all patients at once, pack after pack).
    ``engine="spark"`` runs it in Spark, partitioned by patient (``vigie.api.spark``; packs as
    their IR, which is what the executors receive): the same alerts in the same order."""
    at = normalise_time(as_of)
    if engine == "spark":
        from vigie.api.spark import SparkError, evaluate_in_spark

        irs = [p for p in packs if not isinstance(p, LoadedPack)]
        if len(irs) != len(packs):
            raise BatchError("the spark engine takes the packs as their IR", usage=True)
        try:
            found = evaluate_in_spark(irs, frames, at, patients, site)
        except SparkError as error:
            raise BatchError(str(error), usage=error.usage) from None
        if progress is not None:
            progress(len(packs), len(packs))
        return worklist_order(found)
    alerts: list[Alert] = []
    for done, pack in enumerate(packs, 1):
        alerts += evaluate_columnar(pack, frames, at, site=site, patients=patients, records=records)
        if progress is not None:
            progress(done, len(packs))
    return worklist_order(alerts)


def with_priorities(
    alerts: Sequence[Alert],
    frames: Mapping[str, pl.DataFrame],
    as_of: datetime,
    records: dict[str, PatientRecord] | None = None,
) -> list[Alert]:
    """The worklist: each alert with its priority score (``vigie.engine.priority``), highest
    first; patient context read from the facts of the patients with an alert only (``records``:
    those already rebuilt to explain the alerts)."""
    records = {} if records is None else records
    missing = sorted({a.patient_id for a in alerts} - set(records))
    records.update(records_from_frames(frames, missing))
    return [
        item.alert.model_copy(update={"priority": item.priority.score})
        for item in worklist(alerts, records, normalise_time(as_of))
    ]


# Output ------------------------------------------------------------------------------------------


def pack_header(packs: Sequence[LoadedPack]) -> dict[str, Any]:
    each = [{"name": p.name, "version": p.version, "sha256": p.sha256 or ""} for p in packs]
    joined = {
        "name": "+".join(p["name"] for p in each),
        "version": "+".join(p["version"] for p in each),
        "sha256": each[0]["sha256"]
        if len(each) == 1
        else hashlib.sha256("".join(p["sha256"] for p in each).encode()).hexdigest(),
    }
    return {"rule_pack": joined, "rule_packs": each}


def utc_text(moment: datetime) -> str:
    """An ISO 8601 UTC time with ``Z`` (times are naive UTC inside; an aware one converts)."""
    return normalise_time(moment).isoformat() + "Z"


def alert_rows(alerts: Iterable[Alert]) -> list[dict[str, Any]]:
    """The alerts as JSON values, every time in them (the alert's ``as_of``, each evidence's
    ``time`` and its source's ``version_time``, the inputs of derived values) written as the
    run's ``as_of`` is: ISO 8601 UTC with ``Z``."""
    return [_with_utc_times(alert.model_dump()) for alert in alerts]


def _with_utc_times(value: Any) -> Any:
    if isinstance(value, datetime):
        return utc_text(value)
    if isinstance(value, dict):
        return {key: _with_utc_times(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_with_utc_times(item) for item in value]
    return value


def run_header(result: BatchResult, summary: Mapping[str, Any]) -> dict[str, Any]:
    """What the output says of the run besides its alerts: the JSON document's keys, and the
    Parquet file's key-value metadata."""
    return {"as_of": utc_text(result.as_of), **pack_header(result.packs), "summary": summary}


def parquet_metadata(header: Mapping[str, Any]) -> dict[str, str]:
    """The run header as Parquet key-value metadata: ``as_of`` as text, the rest JSON."""
    return {
        key: value if key == "as_of" else json.dumps(value, ensure_ascii=False)
        for key, value in header.items()
    }


def write_output(out: Path, result: BatchResult, summary: dict[str, Any]) -> None:
    """Write the alerts to ``out`` atomically: into a temporary file beside it, then renamed
    over it, so that a run that fails or is killed while writing leaves the previous night's
    file whole (never a truncated one for the worklist to read)."""
    rows = alert_rows(result.alerts)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        if out.suffix.lower() == ".parquet":
            flat = [
                {k: json.dumps(v, ensure_ascii=False) if k in NESTED else v for k, v in row.items()}
                for row in rows
            ]
            schema: dict[str, Any] = {name: pl.String for name in Alert.model_fields}
            schema.update({"level": pl.Int64, "priority": pl.Float64})
            frame = pl.DataFrame(flat, schema=schema, orient="row")
            import pyarrow.parquet as pq

            metadata = parquet_metadata(run_header(result, summary))
            pq.write_table(frame.to_arrow().replace_schema_metadata(metadata), partial)
        else:
            header = run_header(result, summary)
            document = {
                "as_of": header["as_of"],
                "rule_pack": header["rule_pack"],
                "rule_packs": header["rule_packs"],
                "alerts": rows,
                "summary": header["summary"],
            }
            text = json.dumps(document, ensure_ascii=False, indent=1) + "\n"
            partial.write_text(text, encoding="utf-8")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


def read_parquet_header(path: Path) -> dict[str, Any]:
    """The run header of a Parquet output (its key-value metadata): ``as_of``, ``rule_pack``,
    ``rule_packs`` and ``summary``, as in the JSON file."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    header: dict[str, Any] = {}
    for key in ("as_of", "rule_pack", "rule_packs", "summary"):
        value = metadata.get(key.encode())
        if value is not None:
            text = value.decode("utf-8")
            header[key] = text if key == "as_of" else json.loads(text)
    return header


def read_parquet_alerts(path: Path) -> list[dict[str, Any]]:
    """The alerts of a Parquet output, nested fields decoded: equal to the JSON file's."""
    import polars as pl

    return [
        {k: json.loads(v) if k in NESTED and v is not None else v for k, v in row.items()}
        for row in pl.read_parquet(path).to_dicts()
    ]


def site_wards_not_in_input(
    site: SiteConfig | None, frames: Mapping[str, pl.DataFrame]
) -> list[str]:
    """The ward sections of the site file that no stay of the input names. A ward code the
    feeds do not send (a typo: ``NEPRHO-1``) is no error, since a ward may be empty tonight,
    but its patients silently run the hospital's settings: the run says so."""
    if site is None or not site.wards:
        return []
    stays = frames.get("stay")
    seen: set[str] = set()
    if stays is not None and "ward" in stays.columns:
        seen = {str(w) for w in stays.get_column("ward").drop_nulls().unique().to_list()}
    return [
        ward + (f" (did you mean {close[0]}?)" if close else "")
        for ward in sorted(set(site.wards) - seen)
        for close in [difflib.get_close_matches(ward, sorted(seen), n=1, cutoff=0.75)]
    ]


def summary_of(
    result: BatchResult, notes: FeedNotes, site_wards_missing: Sequence[str] = ()
) -> dict[str, Any]:
    severity: Counter[str] = Counter(a.severity for a in result.alerts)
    return {
        "patients_in_input": result.patients_in_input,
        "patients_evaluated": result.patients_evaluated,
        "alerts": len(result.alerts),
        "alerts_by_severity": {s: severity[s] for s in SEVERITY_RANK if severity[s]},
        "alerts_by_rule": dict(Counter(a.rule_id for a in result.alerts).most_common()),
        "patients_with_alerts": len({a.patient_id for a in result.alerts}),
        "messages": dict(sorted(notes.messages.items())),
        "message_errors": len(notes.errors),
        "files_not_read": notes.unread(),
        "units_accepted_from_feeds_only": notes.relabelled_rows(),
        "site_wards_not_in_input": list(site_wards_missing),
        "seconds": round(result.seconds, 3),
    }


def render_summary(
    summary: dict[str, Any], notes: FeedNotes, out: Path, max_errors: int = 20
) -> str:
    lines = [
        f"Patients: {summary['patients_in_input']:,} in the input, "
        f"{summary['patients_evaluated']:,} evaluated",
        f"Alerts: {summary['alerts']:,} for {summary['patients_with_alerts']:,} patients ("
        + (", ".join(f"{s} {n:,}" for s, n in summary["alerts_by_severity"].items()) or "none")
        + ")",
    ]
    lines += [f"  {n:>6,}  {rule}" for rule, n in summary["alerts_by_rule"].items()]
    lines.append(
        "Messages: " + (", ".join(f"{k} {v:,}" for k, v in summary["messages"].items()) or "none")
    )
    for row in summary["units_accepted_from_feeds_only"]:
        lines.append(
            f"Unit note: {row['results']:,} {row['concept']} results sent in {row['unit_sent']} "
            f"read as {row['read_as']} (a label accepted from feeds only, same quantity; "
            f"first at {row['first']})"
        )
    for ward in summary.get("site_wards_not_in_input", ()):
        lines.append(
            f"Site file: no stay of the input is in ward {ward}; "
            "its section was not applied to anyone"
        )
    for line in summary["files_not_read"]:
        lines.append(f"Not read: {line}")
    if notes.errors:
        lines.append(f"Errors ({len(notes.errors):,}; the rest of the feed was read):")
        lines += [f"  {error}" for error in notes.errors[:max_errors]]
        if len(notes.errors) > max_errors:
            lines.append(f"  ... {len(notes.errors) - max_errors:,} more")
    lines.append(f"Written: {out} ({summary['seconds']:.2f} s)")
    return "\n".join(lines)


def progress_on_terminal(
    stream: Any = None, what: str = "patients"
) -> Callable[[int, int], None] | None:
    """A progress line on stderr when it is a terminal, nothing otherwise."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return None

    def show(done: int, total: int) -> None:
        stream.write(f"\rEvaluating: {done:,}/{total:,} {what}")
        if done == total:
            stream.write("\n")
        stream.flush()

    return show


def batch(
    inputs: Sequence[Path],
    as_of: datetime,
    out: Path,
    pack_paths: Sequence[Path] = (),
    config: Path | None = None,
    scope: str = "inpatients",
    fmt: str = "auto",
    engine: str = "local",
    store: str | None = None,
) -> tuple[BatchResult, FeedNotes, dict[str, Any]]:
    """The whole command but the printing and the exit code."""
    started = time.perf_counter()
    if engine == "spark":
        from vigie.api.spark import pyspark_missing

        if (missing := pyspark_missing()) is not None:
            raise BatchError(missing, usage=True)
    irs = compile_packs(pack_paths)
    packs = [load_pack(ir) for ir in irs]
    site = load_config(config, packs) if config is not None else None
    if not out.parent.exists():
        raise BatchError(f"no such folder for the output: {out.parent}", usage=True)
    frames, notes = load_inputs(inputs, fmt, store)
    patients = in_scope(frames, as_of, scope)
    shipped = irs if engine == "spark" else packs
    progress = progress_on_terminal(what="packs")
    records: dict[str, PatientRecord] = {}  # rebuilt once per patient with alerts
    alerts = run_packs(shipped, frames, as_of, patients, site, progress, engine, records)
    alerts = with_priorities(alerts, frames, as_of, records)
    everyone = len(in_scope(frames, as_of, "all"))
    result = BatchResult(normalise_time(as_of), list(packs), everyone, len(patients), alerts)
    result.seconds = time.perf_counter() - started
    summary = summary_of(result, notes, site_wards_not_in_input(site, frames))
    write_output(out, result, summary)
    return result, notes, summary
