"""The site configuration file: which packs, rules, sensitivity level and cursor values a
hospital runs, with ward sections overriding the hospital section.

The file is TOML (read with the standard library's ``tomllib``)::

    [hospital]
    id = "CHU-EXEMPLE"
    packs = ["vigie-default", "ansm-interactions"]   # absent: every pack given to the loader
    level = 1                                       # rules with ``level`` <= 1 run (default 1)
    disable = ["infect.iv_to_oral"]                 # rule ids turned off whatever their level
    enable = []                                     # rule ids turned on whatever their level

    [hospital.cursors]                  # a pack's ``param NAME = DEFAULT in LOW .. HIGH``
    k_max = 5.5                         # a number is in the parameter's declared unit
    aminoglycoside_delay = "36 h"       # or a string "NUMBER UNIT" (durations convert)

    [wards.CARDIO-1]                    # a ward code as the feeds send it (``Stay.ward``)
    level = 2
    [wards.CARDIO-1.cursors]
    k_max = 6.0

A ward section replaces the hospital's ``packs`` and ``level`` when it gives them, adds its
``enable``/``disable`` to the hospital's (the ward's word wins for a rule both name) and
overrides the hospital's cursors one by one. A ward the file does not name gets the hospital
section.

``load_site_config(path, packs)`` checks the file against the packs it will run with (their
names, rule ids, levels and parameters) and reports every problem it finds in one
``SiteConfigErrors`` (a ``SiteConfigError``): its ``errors`` each name the file, the line and
column, the TOML path (``wards.CARDIO-1.cursors.k_max``) and what was expected, in file order;
the error's own attributes are the first problem's. ``SiteConfig.for_ward(ward)`` resolves
the settings of one ward; ``vigie.engine.evaluate(pack, facts, as_of, site=config)``
applies them per patient, by the ward of the stay the patient is in at the evaluation time.

>>> import tempfile, pathlib
>>> ir = {"ir_version": 1, "pack": {"name": "demo", "version": "1"}, "sets": {},
...       "params": {"k_max": {"value": 5.5, "unit": "mmol/L", "min": 5.0, "max": 6.5,
...                            "label": "Seuil", "source": {"file": "demo.rules", "line": 2}}},
...       "rules": [{"id": "bio.k", "level": 1}, {"id": "bio.k2", "level": 2}]}
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "site.toml").write_text('[wards.CARDIO-1.cursors]\\nk_max = 6.8\\n')
>>> try:
...     load_site_config(folder / "site.toml", [ir])
... except SiteConfigError as error:
...     print(error.line, error.column, error.path)
...     print(error.detail)
2 1 wards.CARDIO-1.cursors.k_max
6.8 mmol/L is outside the declared range 5.0 .. 6.5 mmol/L of cursor k_max (Seuil, demo.rules:2)
>>> _ = (folder / "site.toml").write_text('[wards.CARDIO-1]\\nlevel = 2\\n'
...                                        '[wards.CARDIO-1.cursors]\\nk_max = 6.0\\n')
>>> ward = load_site_config(folder / "site.toml", [ir]).for_ward("CARDIO-1")
>>> sorted(ward.enabled_rules or ()), dict(ward.cursors), ward.level
(['bio.k', 'bio.k2'], {'k_max': 6.0}, 2)
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from vigie.engine.errors import EngineError
from vigie.engine.load import LoadedPack, ParamSpec, Selection, param_spec

__all__ = [
    "PackInfo",
    "Section",
    "SiteConfig",
    "SiteConfigError",
    "SiteConfigErrors",
    "WardSettings",
    "applied_under",
    "load_site_config",
    "parse_site_config",
]

HOSPITAL_KEYS = ("id", "name", "packs", "level", "enable", "disable", "cursors")
WARD_KEYS = ("name", "packs", "level", "enable", "disable", "cursors")

# Durations a cursor may be written in, converted to the parameter's declared unit.
_DURATIONS = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_QUANTITY = re.compile(r"^\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*(.*?)\s*$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_T = TypeVar("_T")


class SiteConfigError(EngineError):
    """A site configuration file Vigie cannot use: file, line and column, TOML path, what
    was expected."""

    def __init__(
        self,
        detail: str,
        *,
        file: str,
        path: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.detail = detail
        self.file = file
        self.path = path
        self.line = line
        self.column = column
        where = file
        if line is not None:
            where += f":{line}" + (f":{column}" if column is not None else "")
        prefix = f"{path}: " if path else ""
        super().__init__(f"{where}: {prefix}{detail}")


class SiteConfigErrors(SiteConfigError):
    """Every problem found in one site file, in file order: ``errors`` holds each one (a
    ``SiteConfigError`` with its own line, column, path and detail); the attributes of the
    error itself are the first problem's, so a caller reading one problem still can."""

    def __init__(self, errors: Sequence[SiteConfigError]) -> None:
        if not errors:
            raise ValueError("SiteConfigErrors needs at least one error")
        self.errors = tuple(errors)
        first = self.errors[0]
        super().__init__(
            first.detail, file=first.file, path=first.path, line=first.line, column=first.column
        )
        if len(self.errors) > 1:
            listed = "\n".join(f"  {error}" for error in self.errors)
            self.args = (f"{first.file}: {len(self.errors)} errors\n{listed}",)


# What the file is checked against ----------------------------------------------------------------


@dataclass(frozen=True)
class PackInfo:
    """What a site file may name in a pack: its rules (id -> level) and parameters."""

    name: str
    rules: Mapping[str, int]
    params: Mapping[str, ParamSpec]
    params_source: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, pack: LoadedPack | Mapping[str, Any]) -> PackInfo:
        """From a loaded pack or an IR dict (``rules.compile_pack``'s, or its ``.ir``)."""
        if isinstance(pack, LoadedPack):
            return cls(
                pack.name,
                MappingProxyType({r.id: r.level for r in pack.rules}),
                MappingProxyType(dict(pack.params)),
                MappingProxyType(
                    {name: spec.source for name, spec in pack.params.items() if spec.source}
                ),
            )
        ir = getattr(pack, "ir", pack)
        if not isinstance(ir, Mapping):
            raise EngineError(f"expected a loaded pack or an IR dict, got {type(pack).__name__}")
        params: dict[str, ParamSpec] = {}
        sources: dict[str, str] = {}
        for name, spec in (ir.get("params") or {}).items():
            params[name] = param_spec(name, spec)
            source = spec.get("source") or {}
            if source.get("file"):
                sources[name] = f"{source['file']}:{source.get('line', '?')}"
        return cls(
            str(ir["pack"]["name"]),
            MappingProxyType({str(r["id"]): int(r.get("level", 1)) for r in ir["rules"]}),
            MappingProxyType(params),
            MappingProxyType(sources),
        )


# The model ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One section as written: the hospital's, or a ward's (``None`` = not given)."""

    packs: tuple[str, ...] | None = None
    level: int | None = None
    enable: frozenset[str] = frozenset()
    disable: frozenset[str] = frozenset()
    cursors: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class WardSettings:
    """What one ward runs: packs on (``None``: every pack), the maximum level, rules turned
    on or off by id, cursor values (in each parameter's declared unit), and the rule ids that
    run (when the configuration was checked against packs)."""

    ward: str | None
    packs: frozenset[str] | None
    level: int
    enable: frozenset[str]
    disable: frozenset[str]
    cursors: Mapping[str, float]
    enabled_rules: frozenset[str] | None

    def pack_on(self, name: str) -> bool:
        return self.packs is None or name in self.packs


@dataclass(frozen=True)
class SiteConfig:
    """A checked site configuration (frozen); ``for_ward`` resolves one ward's settings."""

    file: str
    hospital_id: str | None
    name: str | None
    hospital: Section
    wards: Mapping[str, Section]
    catalogue: Mapping[str, PackInfo]

    def for_ward(self, ward: str | None) -> WardSettings:
        """The hospital section overridden by the ward's (a ward not in the file, or no
        ward, gets the hospital's)."""
        own = self.wards.get(ward) if ward is not None else None
        section = own or Section()
        packs = section.packs if section.packs is not None else self.hospital.packs
        level = section.level or self.hospital.level or 1
        state = {rule: True for rule in self.hospital.enable}
        state.update({rule: False for rule in self.hospital.disable})
        state.update({rule: True for rule in section.enable})
        state.update({rule: False for rule in section.disable})
        cursors = {**self.hospital.cursors, **section.cursors}
        on = frozenset(packs) if packs is not None else None
        enabled_rules: frozenset[str] | None = None
        if self.catalogue:
            enabled_rules = frozenset(
                rule
                for name, info in self.catalogue.items()
                if on is None or name in on
                for rule, rule_level in info.rules.items()
                if state.get(rule, rule_level <= level)
            )
        return WardSettings(
            ward=ward,
            packs=on,
            level=level,
            enable=frozenset(r for r, v in state.items() if v),
            disable=frozenset(r for r, v in state.items() if not v),
            cursors=MappingProxyType(cursors),
            enabled_rules=enabled_rules,
        )

    def check_pack(self, pack: LoadedPack) -> None:
        """A configuration applies only to a pack it was checked against (its rule ids and
        cursors were checked against that pack's)."""
        if pack.name not in self.catalogue:
            raise SiteConfigError(
                f"was not checked against pack {pack.name!r}; load it with that pack "
                f"(checked against: {', '.join(sorted(self.catalogue)) or 'no pack'})",
                file=self.file,
            )

    def selection(self, pack: LoadedPack, ward: str | None) -> Selection | None:
        """The pack's selection for a ward, ``None`` when the pack is off there."""
        arguments = self.select_arguments(pack, ward)
        return None if arguments is None else pack.select(**arguments)

    def select_arguments(self, pack: LoadedPack, ward: str | None) -> dict[str, Any] | None:
        """What ``pack.select`` (or a ``LiveEvaluator`` of the pack) takes for a ward —
        ``cursors``, ``level``, ``enabled``, ``disabled`` — ``None`` when the pack is off
        there."""
        self.check_pack(pack)
        settings = self.for_ward(ward)
        if not settings.pack_on(pack.name):
            return None
        rules = self.catalogue[pack.name].rules
        return {
            "cursors": {k: v for k, v in settings.cursors.items() if k in pack.params},
            "level": settings.level,
            "enabled": sorted(r for r in settings.enable if r in rules),
            "disabled": sorted(r for r in settings.disable if r in rules),
        }


def applied_under(site: SiteConfig | None) -> str:
    """What an evaluation ran under, as an alert's event says it: the configuration's file
    (``site configuration version N`` for the service's saved ones), or the packs' defaults."""
    return f"under {site.file}" if site is not None else "under the packs' defaults"


# Loading -----------------------------------------------------------------------------------------


def load_site_config(
    path: str | Path, packs: Iterable[LoadedPack | Mapping[str, Any]] = ()
) -> SiteConfig:
    """Read and check a site file against the packs it will run with (names, rule ids,
    levels, parameters); without packs only its shape and types are checked."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        unreadable = SiteConfigError(f"cannot read the file: {error}", file=file)
        raise SiteConfigErrors([unreadable]) from None
    return parse_site_config(text, file, packs)


def parse_site_config(
    text: str, file: str = "<site config>", packs: Iterable[LoadedPack | Mapping[str, Any]] = ()
) -> SiteConfig:
    """``load_site_config`` on a text already read."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        found = re.search(r"\(at line (\d+), column (\d+)\)", message)
        detail = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", message)
        if found:
            line, column = int(found.group(1)), int(found.group(2))
        else:
            line, column = len(text.splitlines()) or 1, None
        syntax = SiteConfigError(f"not valid TOML: {detail}", file=file, line=line, column=column)
        raise SiteConfigErrors([syntax]) from None
    catalogue = {info.name: info for info in map(PackInfo.of, packs)}
    return _Reader(file, text, catalogue).read(data)


class _Reader:
    """Reads a parsed site file and collects every problem in it: a check that fails records
    a located error and the reading goes on (a bad list item, cursor or key is left out, a
    section that is not a table is read as empty); ``read`` raises them all at the end."""

    def __init__(self, file: str, text: str, catalogue: Mapping[str, PackInfo]) -> None:
        self.file = file
        self.text = text
        self.catalogue = catalogue
        self.positions = _key_positions(text)
        self.rules = {rule: name for name, info in catalogue.items() for rule in info.rules}
        self.max_level = max(
            (level for info in catalogue.values() for level in info.rules.values()), default=None
        )
        self.errors: list[SiteConfigError] = []

    def error(
        self, path: Sequence[str | int], detail: str, value: object = None
    ) -> SiteConfigError:
        line, column = _locate(self.text, self.positions, path, value)
        return SiteConfigError(
            detail, file=self.file, path=_show_path(path), line=line, column=column
        )

    def report(self, path: Sequence[str | int], detail: str, value: object = None) -> None:
        self.errors.append(self.error(path, detail, value))

    def attempt(self, check: Callable[[], _T]) -> _T | None:
        """A check that stops at its own first problem: recorded, and the reading goes on."""
        try:
            return check()
        except SiteConfigError as error:
            self.errors.append(error)
            return None

    def read(self, data: Mapping[str, Any]) -> SiteConfig:
        self.check_keys((), data, ("hospital", "wards"))
        hospital_data = self.table(("hospital",), data.get("hospital", {}), "a table") or {}
        hospital = self.section(("hospital",), hospital_data, HOSPITAL_KEYS)
        wards_data = self.table(("wards",), data.get("wards", {}), "a table of wards") or {}
        wards: dict[str, Section] = {}
        for ward, body in wards_data.items():
            table = self.table(("wards", ward), body, "a table (a ward's section)")
            if table is not None:
                wards[ward] = self.section(("wards", ward), table, WARD_KEYS)
        hospital_id = hospital_data.get("id")
        if hospital_id is not None and not isinstance(hospital_id, str):
            self.report(("hospital", "id"), f"expected a string, got {_kind(hospital_id)}")
        if self.errors:
            # file order by line; within a line, the order read (a list's items in order)
            located = sorted(self.errors, key=lambda e: (e.line is None, e.line or 0))
            raise SiteConfigErrors(located)
        return SiteConfig(
            file=self.file,
            hospital_id=hospital_id,
            name=hospital_data.get("name"),
            hospital=hospital,
            wards=MappingProxyType(wards),
            catalogue=MappingProxyType(dict(self.catalogue)),
        )

    def table(self, path: tuple[str, ...], value: object, what: str) -> Mapping[str, Any] | None:
        if isinstance(value, Mapping):
            return value
        self.report(path, f"expected {what}, got {_kind(value)}")
        return None

    def check_keys(
        self, where: tuple[str, ...], table: Mapping[str, Any], allowed: Sequence[str]
    ) -> None:
        for key in table:
            if key not in allowed:
                section = _show_path(where) if where else "the top level"
                close = _close_to(key, allowed)
                hint = f" (did you mean {close!r}?)" if close else ""
                self.report(
                    (*where, key),
                    f"unknown key {key!r} in {section}; expected one of: {', '.join(allowed)}"
                    + hint,
                )

    def section(
        self, where: tuple[str, ...], body: Mapping[str, Any], allowed: Sequence[str]
    ) -> Section:
        self.check_keys(where, body, allowed)
        if "name" in body and not isinstance(body["name"], str):
            self.report((*where, "name"), f"expected a string, got {_kind(body['name'])}")
        packs = self.packs((*where, "packs"), body["packs"]) if "packs" in body else None
        level = self.attempt(partial(self.level, (*where, "level"), body.get("level")))
        enable = self.rule_ids((*where, "enable"), body.get("enable", []))
        disable = self.rule_ids((*where, "disable"), body.get("disable", []))
        for rule in sorted(enable & disable):
            self.report(
                (*where, "disable"),
                f"rule {rule!r} is both enabled and disabled in this section; "
                "expected each rule in at most one of enable, disable",
                rule,
            )
        cursors_data = body.get("cursors", {})
        cursors_data = self.table((*where, "cursors"), cursors_data, "a table of cursors") or {}
        cursors: dict[str, float] = {}
        for name, value in cursors_data.items():
            path = (*where, "cursors", name)
            cursor = self.attempt(partial(self.cursor, path, name, value))
            if cursor is not None:
                cursors[name] = cursor
        return Section(packs, level, enable, disable, MappingProxyType(cursors))

    def strings(
        self,
        path: tuple[str, ...],
        value: object,
        what: str,
        check: Callable[[tuple[str | int, ...], str], None],
    ) -> list[str]:
        """The list's strings, each checked in turn; a value that is not a list, or an item
        not a string, is reported and left out."""
        if not isinstance(value, list):
            self.report(path, f"expected a list of {what}, got {_kind(value)}")
            return []
        for index, item in enumerate(value):
            if isinstance(item, str):
                check((*path, index), item)
            else:
                self.report((*path, index), f"expected {what[:-1]} (a string), got {item!r}")
        return [item for item in value if isinstance(item, str)]

    def packs(self, path: tuple[str, ...], value: object) -> tuple[str, ...]:
        seen: set[str] = set()

        def check(at: tuple[str | int, ...], name: str) -> None:
            if self.catalogue and name not in self.catalogue:
                known = ", ".join(sorted(self.catalogue))
                self.report(at, f"unknown pack {name!r}; expected one of: {known}", name)
            elif name in seen:
                self.report(at, f"pack {name!r} is listed twice", name)
            seen.add(name)

        return tuple(dict.fromkeys(self.strings(path, value, "pack names", check)))

    def rule_ids(self, path: tuple[str, ...], value: object) -> frozenset[str]:
        def check(at: tuple[str | int, ...], rule: str) -> None:
            if self.catalogue and rule not in self.rules:
                close = _close_to(rule, self.rules)
                hint = f" (did you mean {close!r}?)" if close else ""
                self.report(
                    at,
                    f"unknown rule id {rule!r}{hint}; expected a rule of the packs "
                    f"{', '.join(sorted(self.catalogue))}",
                    rule,
                )

        return frozenset(self.strings(path, value, "rule ids", check))

    def level(self, path: tuple[str, ...], value: object) -> int | None:
        if value is None:
            return None
        top = f" and <= {self.max_level}, the highest level of the packs" if self.max_level else ""
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.error(path, f"bad level {value!r}: expected a whole number >= 1{top}")
        if self.max_level is not None and value > self.max_level:
            raise self.error(path, f"bad level {value}: expected a whole number >= 1{top}")
        return value

    def cursor(self, path: tuple[str, ...], name: str, value: object) -> float:
        specs = [info.params[name] for info in self.catalogue.values() if name in info.params]
        if self.catalogue and not specs:
            known = sorted({p for info in self.catalogue.values() for p in info.params})
            close = _close_to(name, known)
            hint = f" (did you mean {close!r}?)" if close else ""
            raise self.error(
                path,
                f"unknown cursor {name!r}{hint}; expected a parameter of the packs "
                f"{', '.join(sorted(self.catalogue))}: {', '.join(known) or 'none'}",
            )
        number, unit = self.quantity(path, value)
        result: float | None = None
        for spec in specs:
            converted = self.converted(path, spec, number, unit)
            if not spec.min <= converted <= spec.max:
                written = f"{_number(number)} {unit or spec.unit or ''}".rstrip()
                declared = f"{_number(spec.min)} .. {_number(spec.max)}"
                declared += f" {spec.unit}" if spec.unit else ""
                source = next(
                    (
                        info.params_source[name]
                        for info in self.catalogue.values()
                        if info.params.get(name) is spec and name in info.params_source
                    ),
                    None,
                )
                about = ", ".join(x for x in (spec.label, source) if x)
                where = f" ({about})" if about else ""
                raise self.error(
                    path,
                    f"{written} is outside the declared range {declared} of cursor {name}{where}",
                )
            result = converted
        return number if result is None else result

    def quantity(self, path: tuple[str, ...], value: object) -> tuple[float, str | None]:
        """A TOML number (in the declared unit) or a string ``"NUMBER UNIT"``."""
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise self.error(
                path, f'expected a number or a string "NUMBER UNIT", got {_kind(value)}'
            )
        if isinstance(value, str):
            found = _QUANTITY.match(value)
            if not found:
                raise self.error(path, f'expected a number or "NUMBER UNIT", got {value!r}')
            number, unit = float(found.group(1)), found.group(2) or None
        else:
            number, unit = float(value), None
        if not math.isfinite(number):
            raise self.error(path, f"expected a finite number, got {value!r}")
        return number, unit

    def converted(
        self, path: tuple[str, ...], spec: ParamSpec, number: float, unit: str | None
    ) -> float:
        if unit is None or unit == spec.unit:
            return number
        if spec.unit in _DURATIONS and unit in _DURATIONS:
            return number * _DURATIONS[unit] / _DURATIONS[spec.unit]
        if spec.unit is None:
            expected = "a plain number (the parameter has no unit)"
        elif spec.unit in _DURATIONS:
            expected = f"{spec.unit} (or another duration: {', '.join(_DURATIONS)})"
        else:
            expected = spec.unit
        raise self.error(path, f"wrong unit {unit!r} for cursor {spec.name}: expected {expected}")


# Positions ---------------------------------------------------------------------------------------


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _number(value: float) -> str:
    return repr(float(value))


def _show_path(path: Sequence[str | int]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            shown = part if _BARE_KEY.match(part) else '"' + part.replace('"', '\\"') + '"'
            text += ("." if text else "") + shown
    return text


def _close_to(word: str, choices: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.75)
    return found[0] if found else None


def _split_key(text: str) -> tuple[str, ...] | None:
    """A TOML dotted key (``wards."CARDIO 1".cursors``) as its parts; ``None`` if not one."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            return None
        if text[i] in "\"'":
            quote = text[i]
            end = i + 1
            chars: list[str] = []
            while end < n and text[end] != quote:
                if quote == '"' and text[end] == "\\" and end + 1 < n:
                    end += 1
                chars.append(text[end])
                end += 1
            if end >= n:
                return None
            parts.append("".join(chars))
            i = end + 1
        else:
            found = re.match(r"[A-Za-z0-9_-]+", text[i:])
            if not found:
                return None
            parts.append(found.group(0))
            i += found.end()
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            return tuple(parts)
        if text[i] != ".":
            return None
        i += 1


def _outside_quotes(line: str, char: str) -> int:
    quote: str | None = None
    for index, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#":
            return -1
        elif c == char:
            return index
    return -1


def _key_positions(text: str) -> dict[tuple[str, ...], tuple[int, int]]:
    """Where each table header and key is written: path -> (line, column), both from 1."""
    positions: dict[tuple[str, ...], tuple[int, int]] = {}
    table: tuple[str, ...] = ()
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        column = len(raw) - len(raw.lstrip()) + 1
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            inner = stripped.lstrip("[")
            end = _outside_quotes(inner, "]")
            key = _split_key(inner[:end]) if end >= 0 else None
            if key is not None:
                table = key
                positions.setdefault(table, (number, column))
            continue
        equals = _outside_quotes(raw, "=")
        if equals < 0:
            continue
        key = _split_key(raw[:equals])
        if key is not None:
            full = (*table, *key)
            for size in range(len(table) + 1, len(full) + 1):
                positions.setdefault(full[:size], (number, column))
    return positions


def _locate(
    text: str,
    positions: Mapping[tuple[str, ...], tuple[int, int]],
    path: Sequence[str | int],
    value: object,
) -> tuple[int | None, int | None]:
    """The line and column of a path's key (or of a list item's string after its key); the
    nearest enclosing key or table when the path is not written as such (inline tables)."""
    keys = tuple(p for p in path if isinstance(p, str))
    found: tuple[int, int] | None = None
    for size in range(len(keys), 0, -1):
        found = positions.get(keys[:size])
        if found is not None:
            break
    if found is None:
        return None, None
    if isinstance(value, str) and path and isinstance(path[-1], int):
        lines = text.splitlines()
        for index in range(found[0] - 1, min(len(lines), found[0] + 200)):
            line = lines[index]
            if index > found[0] - 1 and (
                (line.lstrip().startswith("[") and not line.lstrip().startswith('["'))
                or _outside_quotes(line, "=") >= 0
            ):
                break
            for quote in ('"', "'"):
                at = line.find(f"{quote}{value}{quote}")
                if at >= 0:
                    return index + 1, at + 1
    return found
