"""The store's facts as columns: one polars frame per fact kind, read straight from SQL.

The batch reads facts this way rather than through ``FactStore.iter_facts``, which builds a
pydantic model per fact (decoding its JSON in Python, then validating it). Here the payloads
are read as JSON text (``CAST(payload AS TEXT)``: text on SQLite, the ``json`` column's own
text on PostgreSQL), a chunk at a time, and polars decodes each chunk into a struct typed
from the fact model, then flattens it into the frame schema: no Python object per fact.

A frame holds what ``FactSet(store.iter_facts()).frame(kind)`` holds (retracted facts left
out, patients as the store merged them), in exactly the columns of
``vigie.engine.factset.fact_columns(kind)`` (``frame_schema``, derived here from the fact
models, since the store does not import the engine): scalar fields as they are (dates and
times naive UTC, ``Literal`` and enum fields as their string value), ``source`` and codings
flattened into ``source_feed``, ``source_version_time``, ``drug_code``..., ``flags`` as the list
of their codes, a tuple of strings (``Allergy.atc``) as a list, ``MedicationOrder.ingredients``
as a list of structs with the fields of ``Ingredient``. Rows are sorted by ``fact_id`` (byte
order), whatever the database's collation.

>>> store = FactStore("sqlite://")
>>> frames = load_frames(store, kinds=["lab"])
>>> list(frames), frames["lab"].height, frames["lab"].schema["time"]
(['lab'], 0, Datetime(time_unit='us', time_zone=None))
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Iterator
from datetime import date, datetime
from enum import Enum
from typing import Any

import polars as pl
from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from sqlalchemy import Select, Text, cast, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from vigie.facts import FACT_KINDS, Flag
from vigie.store.database import FactRow, FactStore, StoreError

__all__ = ["frame_schema", "load_frames"]

# Payloads decoded at once: bounds the JSON text held in memory, not the frames (at 231,641
# facts, peak RSS 395 MB with 20,000, 457 MB with 50,000, 842 MB with 200,000).
CHUNK_ROWS = 20_000
# Patients named in one query (SQLite allows 32,766 bound parameters, PostgreSQL 65,535).
PATIENTS_PER_QUERY = 10_000

_SCALARS: dict[Any, pl.DataType] = {
    str: pl.String(),
    float: pl.Float64(),
    int: pl.Int64(),
    bool: pl.Boolean(),
    datetime: pl.Datetime("us"),
    date: pl.Date(),
}


def _optional_inner(annotation: Any) -> Any:
    """``X`` of ``X | None``; the annotation itself otherwise."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return inner
    return annotation


def _fields(model: type[BaseModel], skip: Iterable[str] = ()) -> dict[str, pl.DataType]:
    """The polars types a model's JSON form decodes into, by field (``skip`` left out)."""
    infos = model.model_fields.items()
    return {name: _json_dtype(info.annotation) for name, info in infos if name not in skip}


def _json_dtype(annotation: Any) -> pl.DataType:
    """The polars type a field's JSON value decodes into."""
    annotation = _optional_inner(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return pl.String()
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return pl.String()
    if typing.get_origin(annotation) is tuple:
        return pl.List(_json_dtype(typing.get_args(annotation)[0]))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pl.Struct(_fields(annotation))
    return _SCALARS[annotation]


def _payload_dtype(kind: str) -> pl.Struct:
    """The struct a stored payload of ``kind`` decodes into (of a flag, only its code)."""
    fields = _fields(FACT_KINDS[kind])
    fields["flags"] = pl.List(pl.Struct(_fields(Flag, skip=("detail",))))
    return pl.Struct(fields)


def _parts(info: Any) -> dict[str, pl.DataType] | None:
    """The fields of a field that is a model (``source``, a coding); ``None`` for others."""
    annotation = _optional_inner(info.annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _fields(annotation)
    return None


def frame_schema(kind: str) -> dict[str, pl.DataType]:
    """The columns of ``load_frames``' frame of ``kind``, in order: a model field (``source``,
    a coding) flattened with its name as prefix, the flags as their codes, the others as
    they decode.

    >>> frame_schema("allergy")["atc"], frame_schema("patient")["birth_date"]
    (List(String), Date)
    """
    schema: dict[str, pl.DataType] = {}
    for name, info in FACT_KINDS[kind].model_fields.items():
        parts = _parts(info)
        if name == "flags":
            schema[name] = pl.List(pl.String())
        elif parts is not None:
            schema.update({f"{name}_{part}": dtype for part, dtype in parts.items()})
        else:
            schema[name] = _json_dtype(info.annotation)
    return schema


def _default(info: Any) -> Any:
    """A field's default as a column value (``None`` when it has none or it is ``None``)."""
    value = info.default
    if value is PydanticUndefined or value is None:
        return None
    if isinstance(value, Enum):
        return value.value
    return list(value) if isinstance(value, tuple) else value


def _column(name: str, info: Any) -> list[pl.Expr]:
    """The expressions turning a decoded field into its frame columns.

    A key the payload lacks (a field added since the fact was stored, or one its model leaves
    out when empty, such as ``ingredients``) takes the model's default, as validation would.
    """
    field, parts = pl.col(name), _parts(info)
    if name == "flags":
        codes = field.list.eval(pl.element().struct.field("code"))
        return [codes.fill_null(pl.lit([], dtype=pl.List(pl.String()))).alias(name)]
    if parts is not None:
        return [field.struct.field(part).alias(f"{name}_{part}") for part in parts]
    default = _default(info)
    if default is None:
        return [field]
    return [field.fill_null(pl.lit(default, dtype=_json_dtype(info.annotation))).alias(name)]


def _columns(kind: str) -> list[pl.Expr]:
    infos = FACT_KINDS[kind].model_fields.items()
    return [expression for name, info in infos for expression in _column(name, info)]


def _queries(kind: str, patient_ids: Iterable[str] | None) -> Iterator[Select[str]]:
    """The queries reading the payloads of ``kind`` (several when many patients are named)."""
    query = select(cast(FactRow.payload, Text)).where(
        FactRow.kind == kind, FactRow.retracted.is_(False)
    )
    if patient_ids is None:
        yield query
        return
    wanted = sorted(set(patient_ids))
    for start in range(0, len(wanted), PATIENTS_PER_QUERY):
        yield query.where(FactRow.patient_id.in_(wanted[start : start + PATIENTS_PER_QUERY]))


def _decode(kind: str, payloads: list[str]) -> pl.DataFrame:
    """One chunk of JSON payloads as frame rows."""
    decoded = pl.Series("payload", payloads, dtype=pl.String()).str.json_decode(
        _payload_dtype(kind)
    )
    return decoded.struct.unnest().select(_columns(kind))


def _read_kind(
    connection: Connection, kind: str, patient_ids: Iterable[str] | None
) -> pl.DataFrame:
    chunks = [pl.DataFrame(schema=frame_schema(kind))]
    for query in _queries(kind, patient_ids):
        result = connection.execution_options(yield_per=CHUNK_ROWS).execute(query)
        chunks.extend(_decode(kind, list(texts)) for texts in result.scalars().partitions())
    return pl.concat(chunks, how="vertical").sort("fact_id")


def _snapshot(store: FactStore) -> Connection:
    """A connection whose reads see one state of the store, whatever ingests write meanwhile
    (SQLite: one read transaction; PostgreSQL: repeatable read, not a snapshot per query)."""
    connection = store.engine.connect()
    if store.engine.dialect.name == "postgresql":
        connection = connection.execution_options(isolation_level="REPEATABLE READ")
    return connection


def load_frames(
    store: FactStore, kinds: Iterable[str] | None = None, patient_ids: Iterable[str] | None = None
) -> dict[str, pl.DataFrame]:
    """The stored facts of ``kinds`` (every kind by default), of the patients named (all by
    default), one frame per kind (an empty frame with the full schema when there is none).

    Raises ``StoreError`` when the store cannot be read or holds a payload that does not
    decode as its kind.
    """
    wanted = list(FACT_KINDS if kinds is None else kinds)
    unknown = [kind for kind in wanted if kind not in FACT_KINDS]
    if unknown:
        raise StoreError(
            f"unknown fact kind {unknown[0]!r}: expected one of {', '.join(FACT_KINDS)}"
        )
    ids = None if patient_ids is None else list(patient_ids)
    try:
        with _snapshot(store) as connection:
            return {kind: _read_kind(connection, kind, ids) for kind in wanted}
    except SQLAlchemyError as error:
        # the driver's own first line: never the statement's parameters (patient ids)
        cause = str(getattr(error, "orig", None) or error).splitlines()[0][:200]
        raise StoreError(f"cannot read the store {store.safe_url}: {cause}") from error
    except pl.exceptions.PolarsError as error:
        # polars' message may quote the payload: patient data, never shown
        raise StoreError(
            f"the store {store.safe_url} holds a fact that does not decode as its kind "
            f"({error.__class__.__name__})"
        ) from error
