"""Fuzzing every connector's split + parse: nothing but a ``FeedError`` ever comes out.

For each feed, Hypothesis sends (a) arbitrary bytes and (b) real good messages mutated: bytes
flipped, the message cut, delimiters, NUL bytes, quotes and line ends inserted, a slice
repeated or removed. ``split`` must never raise; ``parse`` must return a ``ParseOutcome`` or
raise the connector's ``FeedError`` naming the document: any other exception is a bug (the
pipeline would dead-letter the message as an internal error).

The good messages are the hostile suite's baselines (``tests/hostile/*/good*``, built from the
reference data by ``tests/hostile/make_hostile.py``) and the French DPI export. Runs are
derandomised, so CI sees the same examples every time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vigie.connectors.base import Connector, FeedError, ParseOutcome, RawMessage
from vigie.connectors.registry import connector_for
from vigie.connectors.tabular.connector import TabularConnector
from vigie.connectors.tabular.mapping import EXAMPLE_MAPPING

pytestmark = pytest.mark.property

HERE = Path(__file__).parent
HOSTILE = HERE / "hostile"
FRENCH_EXPORT = HERE / "data" / "csv" / "french-dpi"

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class Feed:
    """A connector under test, the document name it is given, and good seed documents."""

    name: str
    connector: Callable[[], Connector]
    document: str
    seeds: tuple[Path, ...]

    def __str__(self) -> str:
        return self.name


def _french() -> Connector:
    connector: Connector = TabularConnector(EXAMPLE_MAPPING)
    return connector


FEEDS = [
    Feed("hl7", lambda: connector_for("hl7"), "fuzz.hl7", (HOSTILE / "hl7" / "good.hl7",)),
    Feed("hprim", lambda: connector_for("hprim"), "fuzz.hpr", (HOSTILE / "hprim" / "good.hpr",)),
    Feed(
        "fhir-ndjson",
        lambda: connector_for("fhir"),
        "fuzz.ndjson",
        (HOSTILE / "fhir" / "good.ndjson",),
    ),
    Feed(
        "fhir-bundle",
        lambda: connector_for("fhir"),
        "fuzz.json",
        (HOSTILE / "fhir" / "good-bundle.json",),
    ),
    Feed("pn13", lambda: connector_for("pn13"), "fuzz.xml", (HOSTILE / "pn13" / "good.xml",)),
    Feed(
        "csv-biologie",
        _french,
        "BIOLOGIE_20240301.csv",
        (FRENCH_EXPORT / "BIOLOGIE_20240301.csv",),
    ),
    Feed(
        "csv-prescriptions",
        _french,
        "PRESCRIPTIONS_20240301.csv",
        (FRENCH_EXPORT / "PRESCRIPTIONS_20240301.csv",),
    ),
]

# Bytes that mean something to one feed or another: delimiters, escapes, quotes, line ends,
# XML and JSON punctuation, NUL, a UTF-8 lead byte without its follower, an MLLP frame byte.
SPECIAL = [
    b"|",
    b"^",
    b"~",
    b"\\",
    b"&",
    b";",
    b",",
    b'"',
    b"'",
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b"<",
    b">",
    b"</",
    b"&lt;",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b"\xc3",
    b"\xff",
    b"\x0b",
    b"\x1c",
    b"MSH|",
    b"OBX|",
    b"H|~^\\&|",
    b"L|1",
    b"-",
    b"e308",
    b"99999999",
    b"00000000",
]


def _run(feed: Feed, content: bytes) -> None:
    """Split and parse; only a ``ParseOutcome`` or a ``FeedError`` naming the document."""
    connector = feed.connector()
    raws = list(connector.split(feed.document, content))
    for raw in raws:
        assert isinstance(raw, RawMessage) and raw.document == feed.document
        try:
            outcome = connector.parse(raw)
        except FeedError as error:
            assert str(error).startswith(feed.document), str(error)
            continue
        assert isinstance(outcome, ParseOutcome)
        for problem in outcome.errors:
            assert isinstance(problem, FeedError) and str(problem).startswith(feed.document)


@st.composite
def mutated(draw: st.DrawFn, feed: Feed) -> bytes:
    """A seed document with one to four mutations."""
    content = bytearray(draw(st.sampled_from(feed.seeds)).read_bytes())
    for _ in range(draw(st.integers(1, 4))):
        if not content:
            break
        at = draw(st.integers(0, len(content) - 1))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete", "repeat"]))
        if kind == "flip":
            content[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del content[at:]
        elif kind == "insert":
            content[at:at] = draw(st.sampled_from(SPECIAL))
        else:
            end = min(len(content), at + draw(st.integers(1, 200)))
            piece = content[at:end]
            content[at:end] = piece * 2 if kind == "repeat" else b""
    return bytes(content)


@pytest.mark.parametrize("feed", FEEDS, ids=str)
def test_seeds_parse_cleanly(feed: Feed) -> None:
    """The seeds are good: every message gives facts and no error (else the fuzzing below
    would start from broken input)."""
    connector = feed.connector()
    for seed in feed.seeds:
        for raw in connector.split(feed.document, seed.read_bytes()):
            outcome = connector.parse(raw)
            assert outcome.facts and not outcome.errors, [str(e) for e in outcome.errors]


@pytest.mark.parametrize("feed", FEEDS, ids=str)
def test_arbitrary_bytes_give_only_feed_errors(feed: Feed) -> None:
    @FUZZ
    @given(st.one_of(st.binary(max_size=600), st.text(max_size=300).map(str.encode)))
    def check(content: bytes) -> None:
        _run(feed, content)

    check()


@pytest.mark.parametrize("feed", FEEDS, ids=str)
def test_mutated_good_messages_give_only_feed_errors(feed: Feed) -> None:
    @FUZZ
    @given(mutated(feed))
    def check(content: bytes) -> None:
        _run(feed, content)

    check()
