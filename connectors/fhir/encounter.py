"""Stays from FHIR R4 Encounter resources held as plain JSON dicts.

Read with the typed readers of ``vigie.connectors.fhir.fast`` (see there for the shared
conventions).

- The ward is the ``Encounter.location`` of physical type ``wa``, else the first location that is
  not a bed or a room, else the service provider, else the encounter class.
- The bed is the ``bd`` (bed) or ``ro`` (room) location, ``room/bed`` with both as HL7 PV1-3
  gives them; without physical types, the second location.
- Locations the patient has left or not reached yet (``completed``, ``planned``) are used only
  when there is no other. A location's type and name are read on the Encounter, else on the
  Location resource when the message holds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from vigie.connectors.fhir.fast import (
    EntryProblem,
    ResourceEntry,
    _coded,
    _concept_code,
    _datetime,
    _join,
    _obj,
    _objects,
    _text,
    reference_id,
)
from vigie.facts import AnyFact, Stay

__all__ = ["EXTRACTORS"]

_STAY_STATUS = {
    "planned": "planned",
    "arrived": "planned",
    "triaged": "planned",
    "in-progress": "in-progress",
    "onleave": "in-progress",
    "finished": "finished",
    "cancelled": "cancelled",
    "entered-in-error": "cancelled",  # only read to name the facts it retracts
    "unknown": "unknown",
}


def _stay(entry: ResourceEntry) -> list[AnyFact]:
    resource = entry.resource
    period = _obj(resource, "period", "") or {}
    places = _places(entry)
    ward = _ward_place(places)
    return [
        entry.fact(
            Stay,
            fact_id=entry.fact_id(),
            patient_id=entry.patient_id("subject"),
            source=entry.source(),
            stay_id=entry.resource_id,
            ward=ward.name if ward else _ward_otherwise(resource),
            bed=_bed(places, ward),
            admit_time=_datetime(period, "start", "period"),
            discharge_time=_datetime(period, "end", "period"),
            status=_coded(resource, "status", "", _STAY_STATUS, "unknown"),
        )
    ]


# Encounter.location[].status values of places the patient is not in now.
_PAST_OR_FUTURE_PLACE = frozenset({"completed", "planned"})
_BED_TYPES = ("bd", "ro")  # bed, room (location-physical-type)
_WARD_TYPE = "wa"


class _Place(NamedTuple):
    """An Encounter.location[] entry: its name and physical type (``wa``, ``ro``, ``bd``...)."""

    name: str
    physical_type: str | None


def _places(entry: ResourceEntry) -> list[_Place]:
    """The locations of the stay, those the patient has left (or not reached) set aside.

    A location's physical type is read on the Encounter, else on the Location resource when the
    message holds it; its name is the reference's display, else the Location's name, else its id.
    """
    current: list[_Place] = []
    other: list[_Place] = []
    for path, location in _objects(entry.resource, "location", ""):
        reference = _obj(location, "location", path)
        if reference is None:
            continue
        ref_path = _join(path, "location")
        target = _text(reference, "reference", ref_path)
        resolved = entry.context.index.resolve(target) if target else None
        name = _text(reference, "display", ref_path) or _location_name(resolved, target)
        if not name:
            continue
        physical = _concept_code(location, "physicalType", path)
        if physical is None:
            physical = _location_type(resolved)
        place = _Place(name, physical)
        past = _text(location, "status", path) in _PAST_OR_FUTURE_PLACE
        (other if past else current).append(place)
    return current or other


def _location_name(resolved: dict[str, Any] | None, reference: str | None) -> str | None:
    name = resolved.get("name") if resolved is not None else None
    if isinstance(name, str) and name:
        return name
    return reference_id(reference) if reference else None


def _location_type(resolved: dict[str, Any] | None) -> str | None:
    """A Location resource's physical type; a malformed one is that resource's own problem
    (reported on its entry), so the stay is read without it."""
    if resolved is None:
        return None
    try:
        return _concept_code(resolved, "physicalType", "")
    except EntryProblem:
        return None


def _ward_place(places: list[_Place]) -> _Place | None:
    """The ward-level location (``wa``), else the first that is not a bed or a room."""
    for place in places:
        if place.physical_type == _WARD_TYPE:
            return place
    return next((p for p in places if p.physical_type not in _BED_TYPES), None)


def _bed(places: list[_Place], ward: _Place | None) -> str | None:
    """The bed (``bd``) or room (``ro``) location, ``room/bed`` with both as HL7 PV1-3 gives
    them; without physical types, the second location."""
    typed = {p.physical_type: p.name for p in places if p.physical_type in _BED_TYPES}
    if typed:
        room, bed = typed.get("ro"), typed.get("bd")
        return f"{room}/{bed}" if room and bed else bed or room
    others = [p for p in places[1:] if p is not ward and p.physical_type is None]
    return others[0].name if others else None


def _ward_otherwise(resource: dict[str, Any]) -> str | None:
    """Without a location: the service provider, else the encounter class."""
    provider = _obj(resource, "serviceProvider", "")
    if provider is not None:
        name = _text(provider, "display", "serviceProvider")
        if name:
            return name
    encounter_class = _obj(resource, "class", "")
    if encounter_class is not None:
        return _text(encounter_class, "display", "class") or _text(encounter_class, "code", "class")
    return None


EXTRACTORS: dict[str, Callable[[ResourceEntry], list[AnyFact]]] = {"Encounter": _stay}
