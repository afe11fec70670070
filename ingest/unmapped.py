"""The codes and units of a message's facts that the engine could not map.

A connector never guesses: a lab under a code no table maps to a concept, a drug without ATC, a
unit the concept's conversions do not know, is kept and flagged (``unmapped_code``,
``unknown_unit``; ``vigie quality`` reports them over a whole feed). Such a fact is stored but
invisible to the rules that look for its concept or ATC (a potassium under an unknown local code
never triggers the hyperkalaemia rule), while its message is ``loaded``: the answer of an ingest
says which codes and units, located, so that an interface engineer connecting a feed sees them
message by message. Codes and units only: no patient data.

``unmapped_in(facts)`` gives them distinct, in the order first seen, each with how many facts
carried it and where it was first seen.

>>> from datetime import datetime
>>> from vigie.facts import Coding, Flag, FlagCode, LabResult, Source
>>> lab = LabResult(fact_id="l1", patient_id="P1", time=datetime(2024, 1, 2), concept=None,
...     source=Source(feed="hl7v2", document="http", position="OBX[1]-5"),
...     code=Coding(system="LN", code="99999-9"), value=6.4,
...     flags=(Flag(code=FlagCode.UNMAPPED_CODE,
...                 detail="OBX[1]-3: code '99999-9' is not mapped to a lab concept"),))
>>> [(u.type, u.system, u.code, u.position, u.count) for u in unmapped_in([lab, lab])]
[('unmapped_code', 'LN', '99999-9', 'OBX[1]-3', 2)]
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vigie.facts import CODED_FIELDS, AnyFact, Coding, FlagCode

__all__ = ["UNMAPPED_FLAGS", "Unmapped", "tally_unmapped", "unmapped_in"]

UNMAPPED_FLAGS = frozenset({FlagCode.UNMAPPED_CODE, FlagCode.UNKNOWN_UNIT})
"""The flags an ingest answer reports (the others, a missing dose or frequency, an ATC found
from the drug's name, leave the fact visible to the rules)."""

# A connector's detail starting with the HL7 field it names: ``OBX[1]-3: code ...``.
_HL7_FIELD = re.compile(r"^([A-Z][A-Z0-9]{2}(?:\[\d+\])?-\d+(?:\.\d+)*): ")


@dataclass(frozen=True, slots=True)
class Unmapped:
    """One code or unit the engine could not map, and where it was first seen.

    ``type``: ``unmapped_code`` (``system`` and ``code`` as sent: the code no table maps) or
    ``unknown_unit`` (``unit`` as sent, that the concept's conversions do not know; ``system``
    and ``code`` say which result carried it). ``kind``: the fact's kind (``lab``,
    ``medication_order``...). ``position``: the HL7 segment and field, JSON path or line where
    it was first seen; ``text``: the connector's remark there; ``count``: the facts carrying it.
    ``system`` and ``code`` are ``None`` when the remark is not about the fact's own code (a
    route, a pregnancy answer): ``text`` names what was not mapped.
    """

    type: str
    kind: str
    system: str | None
    code: str | None
    unit: str | None
    position: str | None
    text: str
    count: int = 1

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coding(fact: AnyFact) -> Coding | None:
    field_name = CODED_FIELDS.get(fact.kind)
    found = getattr(fact, field_name, None) if field_name else None
    return found if isinstance(found, Coding) else None


def _about(coding: Coding | None, detail: str) -> Coding | None:
    """The fact's coding when the remark is about it (it quotes the code), else ``None``."""
    if coding is None or not coding.code:
        return None
    quoted = (repr(coding.code), f"|{coding.code}", f" {coding.code} ")
    return coding if any(q in detail for q in quoted) else None


def unmapped_in(facts: Iterable[AnyFact]) -> list[Unmapped]:
    """The distinct unmapped codes and unknown units of ``facts``, in the order first seen."""
    found: dict[tuple[str | None, ...], Unmapped] = {}
    for fact in facts:
        for flag in fact.flags:
            if flag.code not in UNMAPPED_FLAGS:
                continue
            unit = _unit(fact) if flag.code == FlagCode.UNKNOWN_UNIT else None
            coding = _coding(fact)
            if flag.code == FlagCode.UNMAPPED_CODE:
                coding = _about(coding, flag.detail)
            system, code = (coding.system, coding.code) if coding else (None, None)
            field_match = _HL7_FIELD.match(flag.detail)
            position = field_match.group(1) if field_match else fact.source.position
            noted = Unmapped(str(flag.code), fact.kind, system, code, unit, position, flag.detail)
            tally_unmapped(found, [noted])
    return list(found.values())


def _unit(fact: AnyFact) -> str | None:
    """The unit as sent: a result's, else an order's dose's, else an administration's (which
    keeps an unknown dose unit as sent in ``dose_unit``)."""
    unit = getattr(fact, "original_unit", None) or getattr(fact, "original_dose_unit", None)
    unit = unit or getattr(fact, "dose_unit", None)
    return unit if isinstance(unit, str) else None


def _key(found: Unmapped) -> tuple[str | None, ...]:
    # Without a code of its own, a remark is told apart by its text (which names the field).
    text = None if found.code is not None else found.text
    return (found.type, found.kind, found.system, found.code, found.unit, text)


def tally_unmapped(
    tally: dict[tuple[str | None, ...], Unmapped],
    found: Iterable[Unmapped],
    where: str | None = None,
) -> None:
    """Add ``found`` to ``tally`` (distinct codes and units, counted, in the order first seen);
    ``where`` (the message's place in its file) is prefixed to a new one's position."""
    for noted in found:
        key = _key(noted)
        seen = tally.get(key)
        if seen is not None:
            tally[key] = dataclasses.replace(seen, count=seen.count + noted.count)
        elif where:
            position = ", ".join(part for part in (where, noted.position) if part)
            tally[key] = dataclasses.replace(noted, position=position)
        else:
            tally[key] = noted
