"""The clinical source of the generator's truth: the rule tables of ``rule-catalogue.md``.

The ground truth must not follow the rule pack it judges: when a rule's look-back or threshold
is wrong in the pack, the truth must still say what the catalogue says, so that the truth test
fails. This module reads the catalogue's markdown tables (one row per rule: id, situation in
plain words, problem → intervention, severity, cursors, source) and answers the questions the
generator asks of it: how long a look-back is ("latest K+ within 48 h"), how long a delay is
("active for ≥ 48 h"), what a threshold is ("daily dose > 4 g"), what a cursor's default is.

The catalogue is the file ``rule-catalogue.md.gz`` beside this module, a gzipped copy of
``shared/rule-catalogue.md`` (so that it ships with the package) that
``tests/test_rule_catalogue.py`` keeps identical to it.
Where the catalogue gives no window, the generator takes the default pack's stated reading
(its header: "Windows not given by the catalogue: ..."), written here in
``UNSTATED_WINDOWS_HOURS``, never read from the pack's rules.

>>> catalogue = load_catalogue()
>>> catalogue.duration_hours("bio.hyperkalaemia", "K+")
48.0
>>> catalogue.quantity("dose.paracetamol_max", "weight <")
(50.0, 'kg')
>>> catalogue.cursor("infect.duration", "days").default
7.0
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from vigie.errors import VigieError

__all__ = [
    "CATALOGUE",
    "UNSTATED_WINDOWS_HOURS",
    "Catalogue",
    "CatalogueError",
    "CatalogueRule",
    "Cursor",
    "catalogue_text",
    "load_catalogue",
    "parse_catalogue",
]

CATALOGUE = Path(__file__).parent / "rule-catalogue.md.gz"

# Windows the catalogue leaves open, as the default pack's header comment states its reading
# ("Windows not given by the catalogue: renal function uses a creatinine of the last 7 days;
# potassium 48 h; sodium, INR and liver enzymes 72 h; platelets 72 h; CK and the digoxin
# level 7 days"), per measured value, in hours.
UNSTATED_WINDOWS_HOURS: dict[str, float] = {
    "creatinine": 7 * 24.0,  # renal function (clearance, eGFR) for the rules that name none
    "potassium": 48.0,
    "sodium": 72.0,
    "inr": 72.0,  # coag.vka_relay's latest INR
    "alt": 72.0,
    "platelets": 72.0,  # bio.heparin_platelets
    "ck": 7 * 24.0,  # bio.statin_ck
    "digoxin": 7 * 24.0,  # bio.digoxin's level
}

_HOURS = {"h": 1.0, "d": 24.0, "day": 24.0, "days": 24.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?) ?(h|days?|d|months?)\b")
_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)(?: ?([^\s,;()]+))?")
_CURSOR = re.compile(
    r"^(?P<name>[a-z_]+) (?P<value>\d+(?:\.\d+)?)(?: (?P<unit>[^\s\[]+))?"
    r"(?: in \[(?P<low>\d+(?:\.\d+)?), (?P<high>\d+(?:\.\d+)?)\])?$"
)
_COLUMNS = ("id", "situation", "problem → intervention", "severity", "cursors", "source")


class CatalogueError(VigieError, ValueError):
    """The catalogue does not say what was asked, or a table row is not as expected."""


@dataclass(frozen=True)
class Cursor:
    """A parameter a hospital may move: ``egfr_max 30 in [20, 45]``."""

    name: str
    default: float
    unit: str | None
    low: float | None
    high: float | None

    @property
    def hours(self) -> float:
        """The default as a duration in hours (``delay 48 h``, ``window 7 d``)."""
        if self.unit not in _HOURS:
            raise CatalogueError(f"cursor {self.name} is not a duration (unit {self.unit!r})")
        return self.default * _HOURS[self.unit]


@dataclass(frozen=True)
class CatalogueRule:
    id: str
    section: str
    situation: str
    severity: str
    cursors: dict[str, Cursor] = field(default_factory=dict)
    line: int = 0


@dataclass(frozen=True)
class Catalogue:
    rules: dict[str, CatalogueRule]
    path: str = "rule-catalogue.md"

    def rule(self, rule_id: str) -> CatalogueRule:
        try:
            return self.rules[rule_id]
        except KeyError:
            raise CatalogueError(f"{self.path}: no rule {rule_id!r} in the tables") from None

    def _after(self, rule_id: str, phrase: str) -> tuple[CatalogueRule, str]:
        """The text after ``phrase`` in the rule's situation, else in its severity ("critical
        when K+ ≥ 6.0")."""
        rule = self.rule(rule_id)
        for text in (rule.situation, rule.severity):
            at = text.find(phrase)
            if at >= 0:
                return rule, text[at + len(phrase) :]
        raise CatalogueError(
            f"{self.path}:{rule.line}: {rule_id}: neither the situation nor the severity "
            f"says {phrase!r}"
        )

    def duration_hours(self, rule_id: str, phrase: str) -> float:
        """The first duration written after ``phrase`` in the rule's situation, in hours:
        ``("bio.hyperkalaemia", "K+")`` reads "latest K+ within 48 h"."""
        rule, text = self._after(rule_id, phrase)
        match = _DURATION.search(text)
        if match is None or match.group(2) not in _HOURS:
            raise CatalogueError(
                f"{self.path}:{rule.line}: {rule_id}: no duration in hours or days after {phrase!r}"
            )
        return float(match.group(1)) * _HOURS[match.group(2)]

    def quantity(self, rule_id: str, phrase: str) -> tuple[float, str]:
        """The first number written after ``phrase`` and its unit: ``("dose.paracetamol_max",
        "daily dose >")`` reads "daily dose > 4 g" as (4.0, "g")."""
        rule, text = self._after(rule_id, phrase)
        match = _QUANTITY.search(text)
        if match is None:
            raise CatalogueError(f"{self.path}:{rule.line}: {rule_id}: no number after {phrase!r}")
        return float(match.group(1)), match.group(2) or ""

    def cursor(self, rule_id: str, name: str) -> Cursor:
        rule = self.rule(rule_id)
        try:
            return rule.cursors[name]
        except KeyError:
            raise CatalogueError(
                f"{self.path}:{rule.line}: {rule_id} has no cursor {name!r} "
                f"(it has: {', '.join(rule.cursors) or 'none'})"
            ) from None


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _cursors(text: str, where: str) -> dict[str, Cursor]:
    cursors = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        match = _CURSOR.match(part)
        if match is None:
            raise CatalogueError(
                f"{where}: cursor {part!r} is not 'name default [unit] [in [low, high]]'"
            )
        low, high = match.group("low"), match.group("high")
        cursors[match.group("name")] = Cursor(
            match.group("name"),
            float(match.group("value")),
            match.group("unit"),
            None if low is None else float(low),
            None if high is None else float(high),
        )
    return cursors


def parse_catalogue(text: str, path: str = "rule-catalogue.md") -> Catalogue:
    """Every rule row of the catalogue's tables (the tables whose header is ``_COLUMNS``)."""
    rules: dict[str, CatalogueRule] = {}
    section, in_table = "", False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("## "):
            section, in_table = line[3:].strip(), False
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        cells = _cells(line)
        if tuple(cells) == _COLUMNS:
            in_table = True
            continue
        if not in_table or set("".join(cells)) <= set("-: "):
            continue
        where = f"{path}:{number}"
        if len(cells) != len(_COLUMNS):
            raise CatalogueError(f"{where}: expected {len(_COLUMNS)} cells, found {len(cells)}")
        rule_id, situation, _, severity, cursors, _ = cells
        if not re.fullmatch(r"[a-z]+\.[a-z0-9_]+", rule_id) or rule_id in rules:
            raise CatalogueError(f"{where}: expected a new rule id such as 'bio.digoxin'")
        rules[rule_id] = CatalogueRule(
            rule_id, section, situation, severity, _cursors(cursors, where), number
        )
    if not rules:
        raise CatalogueError(f"{path}: no rule table (header | {' | '.join(_COLUMNS)} |)")
    return Catalogue(rules, path)


@cache
def load_catalogue(path: Path = CATALOGUE) -> Catalogue:
    """The catalogue of ``path`` (gzipped when its name ends in .gz)."""
    return parse_catalogue(catalogue_text(path), path.name.removesuffix(".gz"))


def catalogue_text(path: Path = CATALOGUE) -> str:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.decode("utf-8")
