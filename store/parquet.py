"""Fact frames on disk: one Parquet file per fact kind, and a manifest.

The batch evaluator reads facts as columns (``vigie.engine.columnar``); this is the file form
of those columns, for a nightly run that starts from files rather than from the store (a
hospital's extract, a generated hospital for the benchmarks). A frames directory holds
``<kind>.parquet`` for every fact kind (``patient.parquet``, ``medication_order.parquet``...),
each in exactly the columns of ``vigie.engine.factset.fact_columns(kind)`` (``frame_schema``
here, since the store does not import the engine), and ``manifest.json``: the format's name,
its schema version and the rows of each file.

Reading checks every file against the schema *before* reading its rows: a missing file, a
missing column or a column of another type is a ``FramesError`` naming the file and the
column, never a polars exception. Columns the schema does not know are left unread.

>>> import tempfile, pathlib
>>> frames = {kind: pl.DataFrame(schema=frame_schema(kind)) for kind in FACT_KINDS}
>>> with tempfile.TemporaryDirectory() as name:
...     _ = write_frames(frames, pathlib.Path(name))
...     back = read_frames(pathlib.Path(name))
>>> sorted(back) == sorted(FACT_KINDS), back["lab"].schema["time"]
(True, Datetime(time_unit='us', time_zone=None))
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from vigie.errors import VigieError
from vigie.facts import FACT_KINDS
from vigie.store.columns import frame_schema

__all__ = [
    "FORMAT",
    "MANIFEST",
    "SCHEMA_VERSION",
    "FramesError",
    "is_frames_directory",
    "read_frames",
    "read_manifest",
    "write_frames",
]

FORMAT = "vigie-fact-frames"
SCHEMA_VERSION = 1  # raise when fact_columns changes in a way old files cannot be read as
MANIFEST = "manifest.json"


class FramesError(VigieError):
    """A frames directory that cannot be written or read as fact frames."""


def _file(directory: Path, kind: str) -> Path:
    return directory / f"{kind}.parquet"


def _check_schema(where: str, schema: Mapping[str, pl.DataType], kind: str) -> None:
    """Every column of the kind's frame, of its type: else an error naming the place."""
    for column, expected in frame_schema(kind).items():
        found = schema.get(column)
        if found is None:
            raise FramesError(f"{where}: missing column {column!r} ({expected}) of {kind} facts")
        if found != expected:
            raise FramesError(
                f"{where}: column {column!r} is {found}, expected {expected} for {kind} facts"
            )


def write_frames(frames: Mapping[str, pl.DataFrame], directory: Path) -> list[Path]:
    """Write one Parquet file per fact kind (an empty one for a kind ``frames`` lacks) and the
    manifest; the files written, manifest last. Each frame must have its kind's columns
    (extra columns are not written)."""
    unknown = sorted(set(frames) - set(FACT_KINDS))
    if unknown:
        raise FramesError(f"unknown fact kinds {', '.join(unknown)}; expected {list(FACT_KINDS)}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FramesError(f"{directory}: cannot create the frames directory: {error}") from None
    rows: dict[str, int] = {}
    written = []
    for kind in FACT_KINDS:
        schema = frame_schema(kind)
        frame = frames.get(kind, pl.DataFrame(schema=schema))
        _check_schema(f"frame {kind!r}", frame.schema, kind)
        path = _file(directory, kind)
        _write(frame.select(list(schema)), path)
        rows[kind] = frame.height
        written.append(path)
    manifest = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "rows": rows}
    path = directory / MANIFEST
    try:
        path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    except OSError as error:
        raise FramesError(f"{path}: cannot write: {error}") from None
    return [*written, path]


def _write(frame: pl.DataFrame, path: Path) -> None:
    try:
        frame.write_parquet(path, statistics=False)
    except (OSError, pl.exceptions.PolarsError) as error:
        raise FramesError(f"{path}: cannot write: {error}") from None


def is_frames_directory(path: Path) -> bool:
    """Whether ``path`` is a frames directory (it holds a manifest): how a command taking
    feeds or frames tells them apart before reading."""
    return (path / MANIFEST).is_file()


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a frames directory, its format and schema version checked."""
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FramesError(f"{path}: no manifest; is {directory} a fact frames directory?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FramesError(f"{path}: cannot read the manifest: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FramesError(f"{path}: not a {FORMAT} manifest")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise FramesError(
            f"{path}: schema version {version!r}; this Vigie reads version {SCHEMA_VERSION} "
            "(write the frames again)"
        )
    return manifest


def read_frames(directory: Path, kinds: Iterable[str] | None = None) -> dict[str, pl.DataFrame]:
    """The fact frames of a directory written by ``write_frames``: kind → frame in exactly the
    columns of the kind (``kinds``: only those; default every kind)."""
    read_manifest(directory)
    wanted = list(FACT_KINDS) if kinds is None else list(kinds)
    unknown = sorted(set(wanted) - set(FACT_KINDS))
    if unknown:
        raise FramesError(f"unknown fact kinds {', '.join(unknown)}")
    return {kind: _read(_file(directory, kind), kind) for kind in wanted}


def _read(path: Path, kind: str) -> pl.DataFrame:
    try:
        schema = pl.read_parquet_schema(path)
    except FileNotFoundError:
        raise FramesError(f"{path}: missing ({kind} facts)") from None
    except (OSError, pl.exceptions.PolarsError) as error:
        raise FramesError(f"{path}: not a readable Parquet file: {error}") from None
    _check_schema(str(path), schema, kind)
    try:
        return pl.read_parquet(path, columns=list(frame_schema(kind)))
    except (OSError, pl.exceptions.PolarsError) as error:
        raise FramesError(f"{path}: cannot read: {error}") from None
