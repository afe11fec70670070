"""The store's facts as columns (``vigie.store.columns``) hold what the fact models hold.

The reference is the per-fact path: ``FactSet(store.iter_facts()).frame(kind)``, each fact
validated by its pydantic model, then made a row by ``fact_row``.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterator
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from pydantic import BaseModel
from sqlalchemy import insert

from tests.factories import lab, patient
from vigie.engine.factset import FactSet, fact_columns
from vigie.facts import (
    FACT_KINDS,
    AnyFact,
    Coding,
    Flag,
    FlagCode,
    MedicationAdministration,
    MedicationOrder,
    Patient,
    Retraction,
    Sex,
    Source,
)
from vigie.facts.model import Ingredient
from vigie.ingest import ingest
from vigie.store import FactStore, StoreError, columns
from vigie.store.columns import frame_schema, load_frames
from vigie.store.database import FactRow
from vigie.synthetic.canonical import canonical_facts
from vigie.synthetic.catalogue import covered_rules

SRC = Source(feed="csv", document="orders.csv", position="line 2")


@pytest.fixture
def store(store_url: str) -> Iterator[FactStore]:
    with FactStore(store_url) as opened:
        yield opened


def _save(store: FactStore, facts: list[AnyFact]) -> None:
    with store.session() as session:
        store.save_facts(session, facts, None)
        session.commit()


def _assert_same(store: FactStore) -> dict[str, pl.DataFrame]:
    """``load_frames`` equals the per-fact path on every kind; the frames, for more checks."""
    frames = load_frames(store)
    expected = FactSet(list(store.iter_facts()))
    assert list(frames) == list(FACT_KINDS)
    for kind in FACT_KINDS:
        reference = expected.frame(kind).sort("fact_id")
        assert_frame_equal(frames[kind].sort("fact_id"), reference, check_exact=True)
    return frames


# The schema ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(FACT_KINDS))
def test_the_schema_is_the_engines(kind: str) -> None:
    assert list(frame_schema(kind).items()) == list(fact_columns(kind).items())


def test_ingredients_are_structs_of_the_ingredient_fields() -> None:
    struct = pl.Struct(  # Ingredient's declaration, typed by hand
        {
            "name": pl.String(),
            "atc": pl.String(),
            "amount": pl.Float64(),
            "unit": pl.String(),
            "per_amount": pl.Float64(),
            "per_unit": pl.String(),
            "source": pl.String(),
        }
    )
    assert frame_schema("medication_order")["ingredients"] == pl.List(struct)


# Hand-made facts ---------------------------------------------------------------------------


def test_a_medication_order_reads_back_field_by_field(store: FactStore) -> None:
    order = MedicationOrder(
        fact_id="o1",
        patient_id="p1",
        source=SRC.model_copy(update={"version_time": datetime(2024, 1, 1, 9)}),
        flags=(Flag(code=FlagCode.DOSE_FROM_STRENGTH, detail="2 tablets"),),
        order_id="o1",
        drug=Coding(system="http://www.nlm.nih.gov/research/umls/rxnorm", code="857005"),
        label="Paracétamol/codéine 500 mg/30 mg",
        dose=2.0,
        dose_unit="tablet",
        frequency_per_day=3.0,
        start=datetime(2024, 1, 2, 8, 30, 0, 250),
        ingredients=(
            Ingredient(name="paracetamol", atc="N02BE01", amount=500, unit="mg"),
            Ingredient(name="codeine", atc="R05DA04", amount=30, unit="mg", per_unit="tablet"),
        ),
    )
    _save(store, [order])
    (row,) = load_frames(store, kinds=["medication_order"])["medication_order"].to_dicts()
    assert row["source_feed"] == "csv" and row["source_position"] == "line 2"
    assert row["source_version_time"] == datetime(2024, 1, 1, 9)
    assert row["flags"] == ["dose_from_strength"]
    assert row["drug_code"] == "857005" and row["drug_display"] is None
    assert row["label"] == "Paracétamol/codéine 500 mg/30 mg"
    assert row["start"] == datetime(2024, 1, 2, 8, 30, 0, 250) and row["end"] is None
    assert (row["status"], row["as_needed"], row["daily_dose"]) == ("active", False, None)
    assert row["ingredients"] == [
        {"name": "paracetamol", "atc": "N02BE01", "amount": 500.0, "unit": "mg",
         "per_amount": 1.0, "per_unit": None, "source": None},
        {"name": "codeine", "atc": "R05DA04", "amount": 30.0, "unit": "mg",
         "per_amount": 1.0, "per_unit": "tablet", "source": None},
    ]  # fmt: skip


def test_retracted_facts_are_left_out(store: FactStore) -> None:
    kept, withdrawn = lab("p1", "potassium", 4.1, fid="k1"), lab("p1", "potassium", 7.9, fid="k2")
    _save(store, [kept, withdrawn])
    with store.session() as session:
        retraction = Retraction(kind="lab", fact_id="k2", patient_id="p1", source=SRC)
        store.retract(session, [(retraction, None)])
        session.commit()
    frame = load_frames(store, kinds=["lab"])["lab"]
    assert frame.select("fact_id", "value").rows() == [("k1", 4.1)]
    _assert_same(store)


def test_patients_come_merged_as_the_store_merged_them(store: FactStore) -> None:
    _save(store, [patient("p1", born=date(1940, 5, 1), sex=Sex.FEMALE)])
    _save(store, [Patient(fact_id="p1", patient_id="p1", source=SRC)])  # a lab's sparse PID
    frame = load_frames(store, kinds=["patient"])["patient"]
    assert frame.select("fact_id", "birth_date", "sex").rows() == [("p1", date(1940, 5, 1), "F")]


def test_keys_a_payload_lacks_take_the_models_defaults(store: FactStore) -> None:
    """A payload stored before a field existed (or without the keys its model leaves out when
    empty) reads as validation reads it: the field's default."""
    payload = {
        "fact_id": "o1",
        "patient_id": "p1",
        "source": {"feed": "csv", "document": "orders.csv"},
        "order_id": "o1",
        "drug": {"code": "C09AA05"},
    }
    row = {"kind": "medication_order", "fact_id": "o1", "patient_id": "p1", "payload": payload}
    with store.session() as session:
        session.execute(insert(FactRow), [row])
        session.commit()
    frames = _assert_same(store)
    (read,) = frames["medication_order"].to_dicts()
    assert (read["status"], read["as_needed"], read["flags"], read["ingredients"]) == (
        "active",
        False,
        [],
        [],
    )
    assert read["source_message_id"] is None and read["drug_system"] is None


def test_a_payload_that_does_not_decode_is_a_store_error_without_its_content(
    store: FactStore,
) -> None:
    payload = {"fact_id": "k1", "patient_id": "p1", "value": "SECRET-NAME"}
    row = {"kind": "lab", "fact_id": "k1", "patient_id": "p1", "payload": payload}
    with store.session() as session:
        session.execute(insert(FactRow), [row])
        session.commit()
    with pytest.raises(StoreError, match="does not decode") as raised:
        load_frames(store, kinds=["lab"])
    assert "SECRET" not in str(raised.value)


def test_a_store_that_cannot_be_read_is_a_store_error_without_the_patients_asked(
    store: FactStore,
) -> None:
    with store.engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE fact")
    with pytest.raises(StoreError, match="cannot read the store") as raised:
        load_frames(store, kinds=["lab"], patient_ids=["SECRET-ID"])
    assert "SECRET" not in str(raised.value)


def test_an_unknown_kind_is_refused() -> None:
    with FactStore("sqlite://") as store, pytest.raises(StoreError, match="'labs'"):
        load_frames(store, kinds=["labs"])


def test_an_empty_store_gives_every_kind_empty_with_its_schema() -> None:
    with FactStore("sqlite://") as store:
        frames = load_frames(store)
    assert {kind: (frame.height, frame.schema) for kind, frame in frames.items()} == {
        kind: (0, pl.Schema(frame_schema(kind))) for kind in FACT_KINDS
    }


# Filters -----------------------------------------------------------------------------------


def test_kind_and_patient_filters(store: FactStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _save(
        store,
        [
            patient("p1"),
            patient("p2"),
            patient("p3"),
            lab("p1", "potassium", 5.1, fid="k1"),
            lab("p2", "potassium", 3.2, fid="k2"),
            lab("p3", "sodium", 140.0, fid="k3"),
        ],
    )
    assert list(load_frames(store, kinds=["lab", "patient"])) == ["lab", "patient"]
    frames = load_frames(store, kinds=["lab"], patient_ids=["p3", "p1", "p1"])
    assert frames["lab"].select("fact_id", "patient_id").rows() == [("k1", "p1"), ("k3", "p3")]
    assert load_frames(store, patient_ids=[])["lab"].height == 0
    assert load_frames(store, kinds=["lab"], patient_ids=["nobody"])["lab"].height == 0
    # many patients are asked in several queries: the same rows, in the same order
    monkeypatch.setattr(columns, "PATIENTS_PER_QUERY", 1)
    again = load_frames(store, patient_ids=["p3", "p1"])
    assert_frame_equal(again["lab"], frames["lab"])
    assert again["patient"]["fact_id"].to_list() == ["p1", "p3"]


def test_small_chunks_give_the_same_frames(
    store: FactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _save(store, [lab("p1", "potassium", 3.0 + n / 10, fid=f"k{n:02}") for n in range(25)])
    whole = load_frames(store, kinds=["lab"])["lab"]
    monkeypatch.setattr(columns, "CHUNK_ROWS", 4)
    assert_frame_equal(load_frames(store, kinds=["lab"])["lab"], whole)
    assert whole.height == 25 and whole["value"].to_list()[:2] == [3.0, 3.1]


# Generated and real feeds ------------------------------------------------------------------


def test_a_generated_hospital(store: FactStore) -> None:
    facts = canonical_facts(30, 3, 1, rates=dict.fromkeys(covered_rules(), 0.05))
    _save(store, facts)
    frames = _assert_same(store)
    assert all(frames[kind].height > 0 for kind in FACT_KINDS)


@pytest.mark.slow
def test_the_reference_feeds(store: FactStore, shared_data: Path) -> None:
    """FHIR (synthea bundles and bulk NDJSON, the French IG), HL7 v2, HPRIM and PN13 as the
    connectors read them: flags, combination products' ingredients, unicode labels."""
    paths = [
        shared_data / "fhir" / "synthea-r4",
        shared_data / "fhir" / "synthea-bulk-10",
        shared_data / "hl7v2",
        shared_data / "hprim",
        shared_data / "fr-medication-ig" / "pn13_xml",
        shared_data / "fr-medication-ig" / "fhir_bundles",
    ]
    ingest(paths, store)
    frames = _assert_same(store)
    orders = frames["medication_order"]
    assert orders.filter(pl.col("ingredients").list.len() > 1).height > 0
    assert frames["lab"].filter(pl.col("flags").list.len() > 0).height > 0


# Property: any facts -----------------------------------------------------------------------

_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_KEY = st.sampled_from(["a", "b", "é", "😀", "A", "a b", "z" * 40])


def _strategy(annotation: Any) -> st.SearchStrategy[Any]:
    """Any value of a field's type, ``None`` included where allowed."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        if inner is float:  # the fact models refuse NaN and infinities (a test below)
            return st.none() | st.floats(allow_nan=False, allow_infinity=False)
        return st.none() | _strategy(inner)
    if typing.get_origin(annotation) is typing.Literal:
        return st.sampled_from(typing.get_args(annotation))
    if typing.get_origin(annotation) is tuple:
        return st.lists(_strategy(typing.get_args(annotation)[0]), max_size=3).map(tuple)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return st.sampled_from(list(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _model(annotation)
    scalars: dict[Any, st.SearchStrategy[Any]] = {
        str: _TEXT,
        # a field that cannot be None cannot be NaN or infinite: stored as null, the model
        # would not read it back (Ingredient.per_amount)
        float: st.floats(allow_nan=False, allow_infinity=False),
        bool: st.booleans(),
        datetime: st.datetimes(),
        date: st.dates(),
    }
    return scalars[annotation]


def _model(model: type[BaseModel]) -> st.SearchStrategy[Any]:
    fields = {name: _strategy(info.annotation) for name, info in model.model_fields.items()}
    if "fact_id" in fields:
        fields.update(fact_id=_KEY, patient_id=_KEY)
    return st.builds(model, **fields)


_FACTS = st.lists(st.sampled_from(list(FACT_KINDS.values())).flatmap(_model), max_size=12)


@pytest.mark.property
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(facts=_FACTS)
def test_any_facts_read_back_as_the_models_read_them(facts: list[AnyFact]) -> None:
    with FactStore("sqlite://") as store:
        _save(store, facts)
        _assert_same(store)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_a_non_finite_number_never_reaches_the_store(value: float) -> None:
    """An infinite or NaN amount is refused by the fact model, where a connector builds it
    (its message then goes to the dead letters with the error): the store would write it as a
    non-standard JSON token no columnar reader decodes."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="finite number"):
        MedicationAdministration(
            fact_id="a", patient_id="p", source=Source(feed="f", document="d"),
            administration_id="A1", drug=Coding(code="x"), dose=value, time=datetime(2000, 1, 1),
        )  # fmt: skip
