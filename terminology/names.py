"""Drug names to ATC: the fallback for a drug whose code no table maps.

A coded drug line also carries a label: the RxNorm display (``amlodipine 5 MG Oral Tablet``,
``Acetaminophen 325 MG / Oxycodone Hydrochloride 5 MG Oral Tablet``,
``1 ML Morphine Sulfate 10 MG/ML Injection``), a French product name
(``PARACETAMOL 500 mg, comprimé``) or a pharmacy's free text. ``parse_label`` reads the
substances and their strengths from it; ``DrugNames.match`` finds their ATC codes:

- one substance: the ATC of the BDPM products where it is the only active substance
  (``drugs_names.csv.gz``, built from the BDPM by ``build_tables.py``), chosen among the products
  of the label's route when the substance has several codes (salbutamol inhaled R03AC02, oral
  R03CC02), else the code most products carry;
- two or more: the ATC of the BDPM products that contain exactly those substances (oxycodone +
  paracetamol → N02AJ17); without such products the line's ATC stays unknown, but each
  ingredient still has its own ATC and strength.

Names are compared by ``name_key``: without case, accents, punctuation or word order, French
and English spellings brought together (a final ``e`` dropped: ``atorvastatine`` and
``atorvastatin``; ``acide clavulanique`` and ``clavulanic acid`` both read ``clavulanate``;
``chlorure`` reads ``chloride``), and salts and hydrates left out (``chlorhydrate de``,
``Hydrochloride``, ``sodique``, ``Sodium``, ``maléate``, ``monohydrate``...) unless nothing else
is left (``chlorure de potassium``). US adopted names that differ from the INN (acetaminophen,
albuterol, epinephrine...) go through ``drugs_names_aliases.csv``; the few substances whose
BDPM products carry no ATC code at all are listed with their WHO ATC code in
``drugs_names_who.csv`` and, for the substances of the ANSM thesaurus (digoxin, warfarin...),
``drugs_names_who_ansm.csv``.

>>> label = parse_label("Acetaminophen 325 MG / Oxycodone Hydrochloride 5 MG Oral Tablet")
>>> [(i.name, i.amount, i.unit) for i in label.ingredients], label.route
([('Acetaminophen', 325.0, 'mg'), ('Oxycodone Hydrochloride', 5.0, 'mg')], 'oral')
>>> name_key("CHLORHYDRATE D'AMIODARONE") == name_key("Amiodarone Hydrochloride")
True
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from vigie.terminology.units import read_rows

__all__ = [
    "NAMES_TABLE",
    "DrugNames",
    "LabelIngredient",
    "MatchedIngredient",
    "NameMatch",
    "ParsedLabel",
    "name_key",
    "parse_label",
    "route_class",
]

NAMES_TABLE = "drugs_names.csv"
ALIASES_TABLE = "drugs_names_aliases.csv"
WHO_TABLE = "drugs_names_who.csv"
# The ANSM pack's substances reviewed against the WHO ATC index, one code each (a copy kept equal
# to rules/packs/ansm_substances.csv by tests/test_drug_names.py).
WHO_ANSM_TABLE = "drugs_names_who_ansm.csv"
COMBINATION = " + "  # joins the sorted keys of a combination's substances in the table

# Words of a name that are no part of the substance: French articles, salts, hydrates, esters
# that do not change the ATC code. Compared after accents and case are gone.
_STOPWORDS = frozenset({"de", "d", "du", "des", "l", "la", "le", "et", "and"})
_HYDRATES = frozenset(
    [
        "monohydrate",
        "dihydrate",
        "trihydrate",
        "hemihydrate",
        "sesquihydrate",
        "pentahydrate",
        "heptahydrate",
        "hydrate",
        "hydratee",
        "anhydre",
        "anhydrous",
        "dessechee",
        "desseche",
        "dilue",
        "diluee",
    ]
)
_SALTS = (
    frozenset(
        [
            "chlorhydrate",
            "dichlorhydrate",
            "hydrochloride",
            "dihydrochloride",
            "hcl",
            "bromhydrate",
            "hydrobromide",
            "sulfate",
            "hemisulfate",
            "bisulfate",
            "sulphate",
            "maleate",
            "hydrogenomaleate",
            "tartrate",
            "hemitartrate",
            "bitartrate",
            "besilate",
            "besylate",
            "mesilate",
            "mesylate",
            "methanesulfonate",
            "fumarate",
            "hemifumarate",
            "succinate",
            "acetate",
            "citrate",
            "phosphate",
            "diphosphate",
            "sodique",
            "potassique",
            "calcique",
            "magnesique",
            "disodique",
            "sodium",
            "disodium",
            "potassium",
            "calcium",
            "magnesium",
            "base",
            "macrocrystals",
            "macrocristaux",
            "monosodique",
            "bromide",
            "chloride",
            "nitrate",
            "propionate",
            "dipropionate",
            "valerate",
            "furoate",
            "xinafoate",
            "hyclate",
            "embonate",
            "pamoate",
            "trometamol",
            "tromethamine",
            "axetil",
            "medoxomil",
            "mofetil",
            "erbumine",
            "tosilate",
            "tosylate",
            "arginine",
            "lysinate",
            "decanoate",
            "enantate",
            "enanthate",
            "lactate",
            "gluconate",
            "stearate",
            "estolate",
            "ethylsuccinate",
            "pivoxil",
            "proxetil",
            "cilexetil",
        ]
    )
    | _HYDRATES
)
_HYDRATE_ENDINGS = ("hydrate", "hydratee", "hydrated")  # trihydratée, chlorhydrate...
_SALT_MATTERS = frozenset({"ferrous", "ferric"})
_MINERAL_ANIONS = frozenset(
    {"carbonate", "bicarbonate", "oxide", "hydroxide", "fluoride", "iodide", "chloride"}
)
# French chemistry words written as in English, before the final 'e' is dropped.
_WORD_FORMS = {
    "chlorure": "chloride",
    "bromure": "bromide",
    "iodure": "iodide",
    "fluorure": "fluoride",
    "hydroxyde": "hydroxide",
    "oxyde": "oxide",
    "sulphate": "sulfate",
    "ferreux": "ferrous",
    "ferrique": "ferric",
    "hydrogenocarbonate": "bicarbonate",
}
_ACID_WORDS = frozenset({"acide", "acid"})
_ACID_ENDINGS = ("ique", "ic")


def _plain_words(text: str) -> list[str]:
    """Lower-case ASCII words: accents, punctuation and apostrophes are gone."""
    plain = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in plain if not unicodedata.combining(c)).lower()
    return re.sub(r"[^a-z0-9]+", " ", plain).split()


def _acid_as_anion(words: list[str]) -> list[str]:
    """``acide clavulanique`` / ``clavulanic acid`` → ``clavulanate`` (the anion's name)."""
    if not _ACID_WORDS.intersection(words):
        return words
    changed = []
    for word in words:
        ending = next((e for e in _ACID_ENDINGS if word.endswith(e) and len(word) > 5), None)
        changed.append(word[: -len(ending)] + "ate" if ending else word)
    if changed == words:
        return words  # an acid without an -ic word (acide amine...): left as written
    return [word for word in changed if word not in _ACID_WORDS]


def name_key(name: str, *, strip_salts: bool = True) -> str:
    """The comparison key of a substance name (French or English, any case, accents, salts).

    >>> name_key("Naproxène sodique"), name_key("naproxen sodium")
    ('naproxen', 'naproxen')
    >>> name_key("ACIDE ACÉTYLSALICYLIQUE") == name_key("acetylsalicylic acid")
    True
    """
    words = [_WORD_FORMS.get(w, w) for w in _plain_words(name) if w not in _STOPWORDS]
    words = _acid_as_anion(words)
    if strip_salts:
        # Iron's ATC differs per salt (B03AA02 fumarate, B03AA07 sulfate), and a mineral salt
        # is the substance itself (calcium carbonate, magnesium oxide): only hydrates go.
        mineral = all(w in _SALTS or w in _MINERAL_ANIONS for w in words)
        drop = _HYDRATES if mineral or _SALT_MATTERS.intersection(words) else _SALTS
        words = [w for w in words if w not in drop and not w.endswith(_HYDRATE_ENDINGS)] or words
    words = [w[:-1] if len(w) > 3 and w.endswith("e") else w for w in words]
    return " ".join(sorted(words))


# Route classes: the dose form of a label, or the routes of a BDPM product, in a few groups
# wide enough that a substance's ATC code does not change within one.
_ROUTE_WORDS: tuple[tuple[str, str], ...] = (
    ("sous cutane", "parenteral"),  # before "cutane"
    ("subcutaneous", "parenteral"),
    ("intradermique", "parenteral"),
    ("inhal", "inhaled"),
    ("nebul", "inhaled"),
    ("actuat metered", "inhaled"),
    ("ophthalmic", "eye"),
    ("ophtalmique", "eye"),
    ("collyre", "eye"),
    ("otic", "ear"),
    ("auriculaire", "ear"),
    ("nasal", "nasal"),
    ("vaginal", "vaginal"),
    ("intrauterine", "vaginal"),
    ("intra uterine", "vaginal"),
    ("rectal", "rectal"),
    ("suppositor", "rectal"),
    ("enema", "rectal"),
    ("transdermal", "cutaneous"),
    ("transdermique", "cutaneous"),
    ("topical", "cutaneous"),
    ("cutane", "cutaneous"),
    ("cream", "cutaneous"),
    ("creme", "cutaneous"),
    ("ointment", "cutaneous"),
    ("pommade", "cutaneous"),
    ("gel cutane", "cutaneous"),
    ("patch", "cutaneous"),
    ("shampoo", "cutaneous"),
    ("inject", "parenteral"),
    ("syringe", "parenteral"),
    ("intraveine", "parenteral"),
    ("perfusion", "parenteral"),
    ("intramusculaire", "parenteral"),
    ("auto injector", "parenteral"),
    ("cartridge", "parenteral"),
    ("pen injector", "parenteral"),
    ("implant", "parenteral"),
    ("sublingual", "oromucosal"),
    ("mucosal", "oromucosal"),
    ("buccal", "oromucosal"),
    ("voie buccale", "oromucosal"),
    ("oral", "oral"),
    ("tablet", "oral"),
    ("capsule", "oral"),
    ("chewable", "oral"),
    ("comprime", "oral"),
    ("gelule", "oral"),
    ("buvable", "oral"),
    ("sachet", "oral"),
    ("sirop", "oral"),
    ("syrup", "oral"),
    ("lozenge", "oral"),
    ("pastille", "oral"),
)


def route_class(text: str | None) -> str | None:
    """The route class a dose form or route label names (``oral``, ``inhaled``, ``parenteral``,
    ``cutaneous``, ``eye``...), the first listed that it mentions; ``None`` when none.

    >>> route_class("Extended Release Oral Tablet"), route_class("solution pour inhalation")
    ('oral', 'inhaled')
    """
    if not text:
        return None
    plain = " ".join(_plain_words(text))
    padded = f" {plain} "
    for words, route in _ROUTE_WORDS:
        if words in padded:
            return route
    return None


@dataclass(frozen=True)
class LabelIngredient:
    """A substance as a label names it, with the strength written after it (if any)."""

    name: str
    amount: float | None = None
    unit: str | None = None
    per_amount: float = 1.0
    per_unit: str | None = None


@dataclass(frozen=True)
class ParsedLabel:
    """What a label says: its substances in order, its dose form and the route class of that."""

    ingredients: tuple[LabelIngredient, ...]
    form: str | None
    route: str | None


# A number, French thousands groups included (DOLIPRANE 1 000 mg, VITAMINE D3 100 000 UI: a
# space, no-break or narrow no-break space between groups of three digits).
_NUMBER = r"(?:\d{1,3}(?:[ \u00a0\u202f]\d{3})+(?![\d.,])|\d+)(?:[.,]\d+)?"
# Strength units (RxNorm writes them in capitals, French labels in lower case).
_UNITS = {
    "mg": "mg",
    "mcg": "µg",
    "µg": "µg",
    "μg": "µg",
    "ug": "µg",
    "g": "g",
    "gm": "g",
    "ng": "ng",
    "unt": "IU",
    "ui": "IU",
    "iu": "IU",
    "u": "IU",
    "units": "IU",
    "meq": "mEq",
    "mmol": "mmol",
    "ml": "mL",
    "l": "L",
    "%": "%",
}
_PER_UNITS = {
    "ml": "mL",
    "l": "L",
    "g": "g",
    "mg": "mg",
    "actuat": "actuation",
    "hr": "h",
    "h": "h",
    "dose": "dose",
    "24hr": "24 h",
}
_UNIT_PATTERN = "|".join(sorted((re.escape(u) for u in _UNITS), key=len, reverse=True))
_PER_PATTERN = "|".join(sorted((re.escape(u) for u in _PER_UNITS), key=len, reverse=True))
_STRENGTH = (
    rf"(?P<amount>{_NUMBER})\s?(?P<unit>{_UNIT_PATTERN})"
    rf"(?:\s?/\s?(?P<per_amount>{_NUMBER})?\s?(?P<per_unit>{_PER_PATTERN}))?(?![a-z0-9])"
)
_COMPONENT = re.compile(rf"(?P<name>.*?[^\W\d_].*?)\s+{_STRENGTH}(?P<rest>.*)", re.I | re.S)
_SEVERAL_STRENGTHS = re.compile(
    rf"(?P<name>.*?[^\W\d_].*?)\s+(?P<strengths>{_NUMBER}\s?(?:{_UNIT_PATTERN})"
    rf"(?:\s?/\s?{_NUMBER}\s?(?:{_UNIT_PATTERN}))+)(?![a-z0-9/])(?P<rest>.*)",
    re.I | re.S,
)
_STRENGTH_ONLY = re.compile(_STRENGTH, re.I)
_ONE_STRENGTH = re.compile(rf"(?P<amount>{_NUMBER})\s?(?P<unit>{_UNIT_PATTERN})", re.I)
# Leading words of an RxNorm name that are no substance: an application number, a release
# duration (24 HR), the quantity of the pack or device (1 ML, 200 ACTUAT).
_PREFIX = re.compile(
    rf"^(?:(?:NDA|BLA|ANDA)\d+|\d+\s+HR|{_NUMBER}\s+(?:ML|ACTUAT|MG|G|L|DAY))\s+(?=\S)", re.I
)
_BRACKETS = re.compile(r"\[[^\]]*\]|\{[^}]*\}")
_MAX_LABEL = 500  # longer text is no drug label: not parsed


def _number(text: str) -> float:
    return float("".join(text.split()).replace("\u202f", "").replace(",", "."))


def _strength(match: re.Match[str]) -> LabelIngredient:
    per_amount = match.group("per_amount")
    per_unit = match.group("per_unit")
    return LabelIngredient(
        "",
        _number(match.group("amount")),
        _UNITS[match.group("unit").lower()],
        _number(per_amount) if per_amount else 1.0,
        _PER_UNITS[per_unit.lower()] if per_unit else None,
    )


def _clean_name(text: str) -> str:
    return " ".join(text.strip(" ,;:-").split())


def _component(text: str) -> tuple[list[LabelIngredient], str]:
    """The ingredient(s) of one ``/``-separated part of a label and the text after them."""
    several = _SEVERAL_STRENGTHS.fullmatch(text)
    if several is not None:  # French: AMOXICILLINE/ACIDE CLAVULANIQUE 1 g/125 mg, comprimé
        names = [n for n in (_clean_name(p) for p in several.group("name").split("/")) if n]
        amounts = _ONE_STRENGTH.findall(several.group("strengths"))
        if len(names) == len(amounts) > 1:
            return [
                LabelIngredient(name, _number(amount), _UNITS[unit.lower()])
                for name, (amount, unit) in zip(names, amounts, strict=True)
            ], several.group("rest")
    match = _COMPONENT.fullmatch(text)
    if match is None:
        if _STRENGTH_ONLY.fullmatch(text.strip()):
            return [], ""  # a strength without a name (``5 MG``)
        return [LabelIngredient(_clean_name(text))], ""
    strength = replace(_strength(match), name=_clean_name(match.group("name")))
    return [strength], match.group("rest")


def parse_label(text: str | None) -> ParsedLabel | None:
    """The substances, strengths and dose form a drug label writes; ``None`` when it names none.

    Never raises: any text is read as far as it goes.

    >>> parse_label("1 ML Morphine Sulfate 10 MG/ML Injection").ingredients[0]
    LabelIngredient(name='Morphine Sulfate', amount=10.0, unit='mg', per_amount=1.0, per_unit='mL')
    >>> label = parse_label("PARACETAMOL 500 mg, comprimé")
    >>> label.ingredients[0].name, label.form, label.route
    ('PARACETAMOL', 'comprimé', 'oral')
    """
    if not text or len(text) > _MAX_LABEL:
        return None
    plain = " ".join(_BRACKETS.sub(" ", text).split())
    while (prefix := _PREFIX.match(plain)) is not None:
        plain = plain[prefix.end() :]
    ingredients: list[LabelIngredient] = []
    rest = ""
    for part in re.split(r"\s+/\s+", plain):
        found, rest = _component(part)
        ingredients.extend(i for i in found if any(c.isalpha() for c in i.name))
    if not ingredients:
        return None
    form = _clean_name(rest) or None
    return ParsedLabel(tuple(ingredients), form, route_class(form) or route_class(plain))


@dataclass(frozen=True)
class MatchedIngredient:
    """A label's ingredient with the substance it was matched to and that substance's ATC."""

    written: LabelIngredient
    substance: str  # the table's name of the substance (BDPM or WHO spelling)
    atc: str | None


@dataclass(frozen=True)
class NameMatch:
    """The ATC a label's names give (``None`` for a combination without a known code) and its
    matched ingredients; ``matched`` names what was matched, for the fact's flag."""

    atc: str | None
    ingredients: tuple[MatchedIngredient, ...]
    matched: str


@dataclass(frozen=True)
class _Choice:
    atc: str
    route: str
    products: int


class DrugNames:
    """The name tables of a terminology directory (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self._choices: dict[str, list[_Choice]] = defaultdict(list)
        self._names: dict[str, str] = {}
        for row in _rows(NAMES_TABLE, directory):
            key = row["key"]
            self._choices[key].append(_Choice(row["atc"], row["route"], int(row["products"])))
            self._names.setdefault(key, row["name"])
        who_rows = [*_rows(WHO_TABLE, directory), *_rows(WHO_ANSM_TABLE, directory)]
        for row in who_rows:
            key = COMBINATION.join(sorted(name_key(part) for part in row["name"].split(" + ")))
            if key not in self._choices:  # the BDPM wins where it has the substance
                self._choices[key].append(_Choice(row["atc"].strip().upper(), "", 1))
                self._names[key] = row["name"]
        self._aliases = {
            name_key(row["name"]): name_key(row["inn"]) for row in _rows(ALIASES_TABLE, directory)
        }
        # Every substance the tables name, alone or in a combination (clavulanate is only met
        # with amoxicillin): known, even where it has no ATC of its own.
        self._known = {part for key in self._choices for part in key.split(COMBINATION)}
        for key, name in list(self._names.items()):
            parts = key.split(COMBINATION)
            for part, spelling in zip(parts, name.split(" + "), strict=False):
                self._names.setdefault(part, spelling)

    def __len__(self) -> int:
        return len(self._choices)

    def substance_key(self, name: str) -> str | None:
        """The table key a written substance name matches, or ``None``.

        The whole name first (through the aliases), then, for a name of several words, the one
        word that is a known substance (``PARACETAMOL BIOGARAN``, ``Penicillin V Potassium``).
        """
        key = name_key(name)
        key = self._aliases.get(key, key)
        if key in self._known:
            return key
        words = key.split()
        if len(words) < 2:
            return None
        hits = {
            k
            for word in words
            if len(word) > 3 and (k := self._aliases.get(word, word)) in self._known
        }
        return hits.pop() if len(hits) == 1 else None

    def atc_of(self, key: str, route: str | None) -> str | None:
        """The ATC of a substance or combination key: the code most products of the label's
        route carry; without a route, or none of its products, the code most products carry,
        unless the substance has several codes and the route none of them (oral salbutamol,
        R03CC02, among inhaled R03AC02 products): then no code is guessed."""
        choices = self._choices.get(key, [])
        same_route = [c for c in choices if route and c.route == route]
        if route and not same_route and len({c.atc for c in choices}) > 1:
            return None
        counts: dict[str, int] = defaultdict(int)
        for choice in same_route or choices:
            counts[choice.atc] += choice.products
        if not counts:
            return None
        return min(counts, key=lambda atc: (-counts[atc], atc))

    def match(self, text: str | None) -> NameMatch | None:
        """The ATC a label gives by its substance names; ``None`` when no substance is known."""
        label = parse_label(text)
        if label is None:
            return None
        keys = [self.substance_key(i.name) for i in label.ingredients]
        if not any(keys):
            return None
        matched = tuple(
            MatchedIngredient(i, self._names[k], self.atc_of(k, label.route) if k else None)
            if k
            else MatchedIngredient(i, i.name, None)
            for i, k in zip(label.ingredients, keys, strict=True)
        )
        names = " + ".join(m.substance for m in matched)
        if len(keys) == 1:
            return NameMatch(matched[0].atc, matched, names)
        if None in keys or len(set(keys)) != len(keys):
            return NameMatch(None, matched, names)
        combination = COMBINATION.join(sorted(k for k in keys if k))
        return NameMatch(self.atc_of(combination, label.route), matched, names)


def _rows(name: str, directory: Path) -> Iterable[dict[str, str]]:
    if (directory / name).exists() or (directory / f"{name}.gz").exists():
        yield from read_rows(name, directory)
