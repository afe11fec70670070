"""Which dose units the engine can read, and the flag every connector puts on one it cannot.

A drug line's dose is read by the dose rules (daily dose of paracetamol, MME of the opioids)
only in a unit the tables know. A connector keeps the unit as sent, in its canonical spelling
(``unit_aliases.csv``: ``mcg`` → ``µg``, ``cpr`` → ``tablet``); when that spelling is no known
dose unit (``parsec``, ``43``), the line carries an ``unknown_unit`` flag whose detail starts
with where the unit was read (``RXE[1]-5``, a FHIR JSON path, a PN13 element), as a lab result
with an unknown unit does: ``vigie quality`` and the ingest answers list it.

A known dose unit is, after the aliases:

- an amount unit of ``units.csv`` marked ``dose`` (µg, mg, g, kg, IU, MME);
- a volume (mL, L: read through a concentration, ``vigie.connectors.dose_strength``);
- a unit of the dose form (tablet, capsule, sachet, suppository, ampoule, vial, syringe, patch,
  bag, bottle: the canonical units of presentation of ``unit_aliases.csv``).

No unit at all is no unknown unit: a bare number is a count of dose units or a dose without
unit, which ``vigie quality`` counts apart (orders whose dose is still in units); no dose at all
is a ``missing_dose`` flag.

>>> unknown_dose_unit("parsec", "parsec", "RXE[1]-5").detail
"RXE[1]-5: unit 'parsec' is not a known dose unit (units.csv, unit_aliases.csv)"
>>> unknown_dose_unit("cpr", "tablet", "RXE[1]-5") is None
True
>>> unknown_dose_unit("", None, "RXE[1]-5") is None
True
"""

from __future__ import annotations

from functools import lru_cache

from vigie.connectors.dose_strength import DOSE_FORM_UNITS
from vigie.facts import Flag, FlagCode
from vigie.terminology.units import default_unit_tables

__all__ = ["is_dose_unit", "unknown_dose_unit"]

_VOLUME_UNITS = frozenset({"mL", "L"})
# Units of presentation whose doses no strength turns into an amount (dose_strength leaves them
# out), yet known: the line is counted as a dose in units of the form, not as an unknown unit.
_OTHER_FORM_UNITS = frozenset({"patch", "bag", "bottle"})


@lru_cache(maxsize=1)
def _dose_units() -> frozenset[str]:
    amounts = {u.symbol for u in default_unit_tables().units.values() if u.dose}
    return frozenset(amounts) | _VOLUME_UNITS | DOSE_FORM_UNITS | _OTHER_FORM_UNITS


def is_dose_unit(canonical: str) -> bool:
    """Whether a unit in its canonical spelling (after ``unit_aliases.csv``) is a dose unit.

    >>> is_dose_unit("µg"), is_dose_unit("tablet"), is_dose_unit("mmol/L")
    (True, True, False)
    """
    return canonical in _dose_units()


@lru_cache(maxsize=1024)  # feeds repeat the same few units; a Flag is frozen, so shareable
def unknown_dose_unit(sent: str | None, canonical: str | None, where: str) -> Flag | None:
    """The ``unknown_unit`` flag of a dose unit as ``sent`` (``canonical``: its spelling after
    the aliases, ``None`` to take it as sent) read at ``where``; ``None`` when the unit is
    known or absent."""
    text = (sent or "").strip()
    if not text or is_dose_unit((canonical or text).strip()):
        return None
    detail = f"{where}: unit {text!r} is not a known dose unit (units.csv, unit_aliases.csv)"
    return Flag(code=FlagCode.UNKNOWN_UNIT, detail=detail)
