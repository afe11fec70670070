"""Regenerate the BDPM-derived drug tables shipped beside this module.

Usage::

    python -m vigie.terminology.build_tables ../shared/data/bdpm [output_dir]

Reads the ANSM public drug database (BDPM) text files — tab-separated, no header — and writes:

- ``drugs_bdpm_cis.csv.gz``: CIS → ATC. ``CIS_MITM.txt`` gives the ATC of about half of the
  products; a product without one inherits the ATC of its generic group (``CIS_GENER_bdpm.txt``:
  same active substance, strength and form) when the group's coded members agree on one ATC.
  The ``basis`` column says which;
- ``drugs_bdpm_cip13.csv.gz``: CIP13 and CIP7 → ATC of their CIS (``CIS_CIP_bdpm.txt``);
- ``substances_bdpm.csv.gz``: BDPM substance (code, name) → the ATC codes of the products that
  contain it (``CIS_COMPO_bdpm.txt`` joined to ``CIS_MITM.txt``), all products and single-substance
  products apart, for mapping substance-level references such as the ANSM interaction thesaurus.
- ``drugs_names.csv.gz``: substance name key (``names.name_key``: no case, accents, salts) and
  route class → ATC and the number of products behind it, for the fallback from a drug label to
  ATC (``names.DrugNames``). A single-substance product counts for its substance (the
  therapeutic fraction's name when the BDPM gives one: MORPHINE for SULFATE DE MORPHINE); a
  product of several substances for the combination, keyed by its sorted substance keys joined
  by `` + ``. The route class comes from the product's routes (``CIS_bdpm.txt``).
- ``compositions_bdpm.csv.gz``: the substances and strengths of each product of two active
  substances or more, by CIS, CIP13 and CIP7 (``compositions.composition_rows``), for the
  per-ingredient doses of combination products.

The output is deterministic (sorted rows, gzip without timestamp) so that a rebuild from the same
files gives identical bytes and a clean diff.
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from vigie.terminology.compositions import COMPOSITION_COLUMNS, composition_rows
from vigie.terminology.names import COMBINATION, name_key, route_class

__all__ = [
    "CompositionLine",
    "build",
    "cip_rows",
    "cis_atc",
    "cis_atc_with_basis",
    "compositions",
    "generic_groups",
    "main",
    "name_rows",
    "product_cips",
    "product_routes",
    "substance_rows",
    "write_table",
]

OUTPUT_DIR = Path(__file__).parent
SOURCE = "ANSM, Base de données publique des médicaments (BDPM), files of 2025-07"
ATC_LENGTHS = frozenset({1, 3, 4, 5, 7})


@dataclass(frozen=True)
class CompositionLine:
    """One line of ``CIS_COMPO_bdpm.txt``: a substance in a product's form."""

    cis: str
    substance_code: str
    substance_name: str
    nature: str  # SA (active substance) or FT (therapeutic fraction)
    link: str  # links an SA to its FT within one product


def _fields(path: Path) -> Iterator[list[str]]:
    """Tab-separated fields of a BDPM file; the files mix CRLF and LF line ends."""
    with path.open(encoding="utf-8", newline="") as handle:
        for line in handle:
            text = line.rstrip("\r\n")
            if text.strip():
                yield [field.strip() for field in text.split("\t")]


def cis_atc(bdpm: Path) -> dict[str, str]:
    """CIS → ATC from ``CIS_MITM.txt`` (one ATC per CIS; malformed codes are skipped)."""
    table: dict[str, str] = {}
    for fields in _fields(bdpm / "CIS_MITM.txt"):
        cis, atc = fields[0], fields[1].upper()
        if cis.isdigit() and len(atc) in ATC_LENGTHS and atc[:1].isalpha():
            table[cis] = atc
    return table


def generic_groups(bdpm: Path) -> dict[str, set[str]]:
    """Generic group id → its CIS (``CIS_GENER_bdpm.txt``)."""
    groups: dict[str, set[str]] = defaultdict(set)
    for fields in _fields(bdpm / "CIS_GENER_bdpm.txt"):
        if len(fields) >= 3 and fields[2].isdigit():
            groups[fields[0]].add(fields[2])
    return groups


def cis_atc_with_basis(bdpm: Path) -> dict[str, tuple[str, str]]:
    """CIS → (ATC, basis): the MITM file first, then agreement within a generic group."""
    mitm = cis_atc(bdpm)
    table = {cis: (atc, "MITM") for cis, atc in mitm.items()}
    for group, members in sorted(generic_groups(bdpm).items(), key=lambda g: int(g[0])):
        coded = {mitm[cis] for cis in members if cis in mitm}
        if len(coded) != 1:
            continue  # no coded member, or members disagree: nothing certain to inherit
        (atc,) = coded
        for cis in members:
            table.setdefault(cis, (atc, f"generic group {group}"))
    return table


def product_cips(bdpm: Path) -> dict[str, list[tuple[str, str]]]:
    """CIS → its presentations' codes, (``CIP13``, code) and (``CIP7``, code)."""
    cips: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for fields in _fields(bdpm / "CIS_CIP_bdpm.txt"):
        cis, cip7, cip13 = fields[0], fields[1], fields[6]
        if len(cip13) == 13 and cip13.isdigit():
            cips[cis].append(("CIP13", cip13))
        if len(cip7) == 7 and cip7.isdigit():
            cips[cis].append(("CIP7", cip7))
    return {cis: sorted(set(codes)) for cis, codes in cips.items()}


def cip_rows(bdpm: Path, atc_of: dict[str, str]) -> list[tuple[str, str, str]]:
    """(system, code, atc) for each CIP13 and CIP7 whose CIS has an ATC."""
    rows: set[tuple[str, str, str]] = set()
    for fields in _fields(bdpm / "CIS_CIP_bdpm.txt"):
        cis, cip7, cip13 = fields[0], fields[1], fields[6]
        atc = atc_of.get(cis)
        if atc is None:
            continue
        if len(cip13) == 13 and cip13.isdigit():
            rows.add(("CIP13", cip13, atc))
        if len(cip7) == 7 and cip7.isdigit():
            rows.add(("CIP7", cip7, atc))
    return sorted(rows)


def compositions(bdpm: Path) -> list[CompositionLine]:
    """The active-substance lines of ``CIS_COMPO_bdpm.txt``."""
    return [
        CompositionLine(f[0], f[2], " ".join(f[3].split()), f[6], f[7])
        for f in _fields(bdpm / "CIS_COMPO_bdpm.txt")
        if len(f) >= 8 and f[6] in {"SA", "FT"}
    ]


def _single_substance_products(lines: Iterable[CompositionLine]) -> set[str]:
    """CIS whose every composition names one active moiety (one SA/FT link group)."""
    links: dict[str, set[str]] = defaultdict(set)
    for line in lines:
        links[line.cis].add(line.link)
    return {cis for cis, groups in links.items() if len(groups) == 1}


def substance_rows(
    lines: Sequence[CompositionLine], atc_of: dict[str, str]
) -> list[tuple[str, str, str, str]]:
    """(substance_code, substance_name, atc, atc_single) with space-separated sorted ATC sets."""
    single = _single_substance_products(lines)
    every: dict[tuple[str, str], set[str]] = defaultdict(set)
    alone: dict[tuple[str, str], set[str]] = defaultdict(set)
    for line in lines:
        atc = atc_of.get(line.cis)
        if atc is None:
            continue
        key = (line.substance_code, line.substance_name)
        every[key].add(atc)
        if line.cis in single:
            alone[key].add(atc)
    return [
        (code, name, " ".join(sorted(every[(code, name)])), " ".join(sorted(alone[(code, name)])))
        for code, name in sorted(every)
    ]


def product_routes(bdpm: Path) -> dict[str, set[str]]:
    """CIS → the route classes of its routes of administration (``CIS_bdpm.txt``, 4th field)."""
    routes: dict[str, set[str]] = {}
    for fields in _fields(bdpm / "CIS_bdpm.txt"):
        if len(fields) >= 4 and fields[0].isdigit():
            classes = {route_class(route) for route in fields[3].split(";")}
            routes[fields[0]] = {c for c in classes if c}
    return routes


def _moieties(lines: Iterable[CompositionLine]) -> dict[str, dict[str, list[str]]]:
    """CIS → link group → the names of its substance: the FT's first (the active moiety), then
    the SA's (the salt as weighed)."""
    moieties: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for line in sorted(lines, key=lambda line: line.nature != "FT"):  # FT first, then SA
        names = moieties[line.cis][line.link]
        if line.substance_name not in names:
            names.append(line.substance_name)
    return moieties


def name_rows(
    lines: Sequence[CompositionLine], atc_of: dict[str, str], routes: dict[str, set[str]]
) -> list[tuple[str, str, str, str, str]]:
    """(key, name, route, atc, products): products counted per substance or combination key,
    route class and ATC; ``name`` is the BDPM name most products give the key."""
    counts: dict[tuple[str, str, str], int] = defaultdict(int)
    spellings: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for cis, groups in sorted(_moieties(lines).items()):
        atc = atc_of.get(cis)
        if atc is None:
            continue
        if len(groups) == 1:  # a single substance counts under each of its names
            (names,) = groups.values()
            keys = {name_key(name): name for name in reversed(names)}
        else:
            named = {name_key(names[0]): names[0] for names in groups.values()}
            keys = {COMBINATION.join(sorted(named)): " + ".join(named[k] for k in sorted(named))}
        for key, name in keys.items():
            if not key or COMBINATION + COMBINATION in key:
                continue
            spellings[key][name] += 1
            for route in sorted(routes.get(cis) or {""}):
                counts[key, route, atc] += 1
    return [
        (key, _most_given(spellings[key]), route, atc, str(products))
        for (key, route, atc), products in sorted(counts.items())
    ]


def _most_given(names: dict[str, int]) -> str:
    return min(names, key=lambda name: (-names[name], len(name), name))


def write_table(
    path: Path, comments: Sequence[str], header: Sequence[str], rows: Iterable[Sequence[str]]
) -> int:
    """Write a ``#``-commented CSV, gzipped without timestamp when the name ends in ``.gz``."""
    buffer = io.StringIO()
    for comment in comments:
        buffer.write(f"# {comment}\n")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    count = 0
    for row in rows:
        writer.writerow(row)
        count += 1
    data = buffer.getvalue().encode("utf-8")
    if path.suffix == ".gz":
        # mtime=0 and no file name in the header keep the bytes reproducible.
        with path.open("wb") as raw, gzip.GzipFile("", "wb", 9, raw, mtime=0) as zipped:
            zipped.write(data)
    else:
        path.write_bytes(data)
    return count


def build(bdpm: Path, output: Path = OUTPUT_DIR) -> dict[str, int]:
    """Build the BDPM tables; returns the row count of each file."""
    with_basis = cis_atc_with_basis(bdpm)
    atc_of = {cis: atc for cis, (atc, _) in with_basis.items()}
    regenerate = "Regenerate with: python -m vigie.terminology.build_tables <bdpm dir>"
    counts = {
        "drugs_bdpm_cis.csv.gz": write_table(
            output / "drugs_bdpm_cis.csv.gz",
            [
                f"CIS -> ATC. Source: {SOURCE}, CIS_MITM.txt and CIS_GENER_bdpm.txt.",
                "basis: MITM = ATC given by CIS_MITM.txt; generic group N = inherited from the"
                " coded members of BDPM generic group N, which all carry that ATC.",
                regenerate,
            ],
            ("system", "code", "atc", "basis"),
            (("CIS", cis, atc, basis) for cis, (atc, basis) in sorted(with_basis.items())),
        ),
        "drugs_bdpm_cip13.csv.gz": write_table(
            output / "drugs_bdpm_cip13.csv.gz",
            [
                f"CIP13/CIP7 -> ATC of the CIS (as in drugs_bdpm_cis). Source: {SOURCE},"
                " CIS_CIP_bdpm.txt.",
                regenerate,
            ],
            ("system", "code", "atc"),
            cip_rows(bdpm, atc_of),
        ),
        "substances_bdpm.csv.gz": write_table(
            output / "substances_bdpm.csv.gz",
            [
                f"BDPM substance -> ATC codes of the products containing it. Source: {SOURCE},"
                " CIS_COMPO_bdpm.txt joined to CIS_MITM.txt.",
                "atc: every product (combinations included); atc_single: single-substance"
                " products only. Space-separated.",
                regenerate,
            ],
            ("substance_code", "substance_name", "atc", "atc_single"),
            substance_rows(compositions(bdpm), atc_of),
        ),
        "drugs_names.csv.gz": write_table(
            output / "drugs_names.csv.gz",
            [
                f"Substance name -> ATC, for drug labels without a mapped code. Source: {SOURCE},"
                " CIS_COMPO_bdpm.txt (substances), CIS_MITM.txt and generic groups (ATC, as in"
                " drugs_bdpm_cis), CIS_bdpm.txt (routes).",
                "key: names.name_key of the substance (no case, accents or salts), or the sorted"
                " keys of a combination's substances joined by ' + '; name: the BDPM spelling;"
                " route: route class of the products (names.route_class); products: how many"
                " BDPM products have that key, route and ATC.",
                regenerate,
            ],
            ("key", "name", "route", "atc", "products"),
            name_rows(compositions(bdpm), atc_of, product_routes(bdpm)),
        ),
        "compositions_bdpm.csv.gz": write_table(
            output / "compositions_bdpm.csv.gz",
            [
                f"Combination products (two active substances or more) -> their substances and"
                f" strengths. Source: {SOURCE}, CIS_COMPO_bdpm.txt (SA lines: the substance as"
                " weighed, its strength and what it is given for), CIS_CIP_bdpm.txt (CIP13 and"
                " CIP7 of each CIS), CIS_MITM.txt (atc: the ATC of the products of that"
                " substance alone, the most frequent one).",
                "per_unit empty: per unit of the dose form (tablet, capsule...); amount empty:"
                " a strength the BDPM does not write as an amount (dilution, qsp).",
                regenerate,
            ],
            COMPOSITION_COLUMNS,
            composition_rows(_fields(bdpm / "CIS_COMPO_bdpm.txt"), atc_of, product_cips(bdpm)),
        ),
    }
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or len(args) > 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: build_tables.py BDPM_DIR [OUTPUT_DIR]", file=sys.stderr)
        return 2
    bdpm = Path(args[0])
    needed = (
        "CIS_MITM.txt",
        "CIS_GENER_bdpm.txt",
        "CIS_CIP_bdpm.txt",
        "CIS_COMPO_bdpm.txt",
        "CIS_bdpm.txt",
    )
    missing = [name for name in needed if not (bdpm / name).is_file()]
    if missing:
        print(f"error: {bdpm}: missing BDPM file(s) {', '.join(missing)}", file=sys.stderr)
        return 1
    output = Path(args[1]) if len(args) == 2 else OUTPUT_DIR
    output.mkdir(parents=True, exist_ok=True)
    for name, count in build(bdpm, output).items():
        print(f"{output / name}: {count} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
