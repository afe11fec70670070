"""A minimal connector for pipeline tests: one message per line, ``pid;concept;value``.

A line ``boom`` simulates a connector bug (a non-FeedError exception). A line may end with
``#ID`` to give its message id (as an HL7 MSH-10 would), else the id is ``document:line``.
"""

from __future__ import annotations

from collections.abc import Iterator

from tests.factories import T0
from vigie.connectors.base import FeedError, ParseOutcome, RawMessage
from vigie.facts import Coding, LabResult, Source

feed = "fake"


def sniff(head: bytes, name: str) -> bool:
    return name.endswith(".fake")


def split(document: str, content: bytes) -> Iterator[RawMessage]:
    for number, line in enumerate(content.splitlines(), start=1):
        if line.strip():
            line, _, given = line.partition(b"#")
            message_id = given.decode() or f"{document}:{number}"
            yield RawMessage(feed, document, line, message_id=message_id, position=f"line {number}")


def parse(raw: RawMessage) -> ParseOutcome:
    text = raw.content.decode()
    if text == "boom":
        raise KeyError("internal")
    parts = text.split(";")
    if len(parts) != 3:
        raise FeedError(raw.document, raw.position, "3 fields 'pid;concept;value'", found=text)
    pid, concept, value = parts
    source = Source(
        feed=feed, document=raw.document, message_id=raw.message_id, position=raw.position
    )
    lab = LabResult(
        fact_id=raw.message_id,
        patient_id=pid,
        source=source,
        concept=concept,
        code=Coding(system="LOCAL", code=concept),
        value=float(value),
        unit="mmol/L",
        time=T0,
    )
    return ParseOutcome(facts=[lab])
