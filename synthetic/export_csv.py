"""Write the canonical CSV layout read by ``connectors/tabular/mappings/vigie-synthetic.toml``.

One file per kind (``patients.csv``, ``stays.csv``, ``orders.csv``, ...), UTF-8, comma
delimiter, dot decimals, ISO 8601 times in UTC with a ``+00:00`` offset, dates ``YYYY-MM-DD``.
Chunks are appended; the header is written once.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from vigie.synthetic.tables import KINDS
from vigie.synthetic.timefmt import as_date, as_iso

__all__ = ["CsvExporter", "csv_frame"]

_TIMES = {
    "stays": ("admit_time", "discharge_time"),
    "orders": ("start", "end"),
    "administrations": ("time",),
    "labs": ("time",),
    "observations": ("time",),
    "conditions": ("onset", "abatement"),
    "allergies": ("recorded",),
    "pregnancies": ("recorded",),
}
_DATES = {"patients": ("birth_date",), "pregnancies": ("estimated_due_date",)}
# Lab units as a French lab writes them (the FHIR and HL7 exports send UCUM codes).
CSV_UNITS = {
    "umol/L": "µmol/L",
    "10*9/L": "G/L",
    "{INR}": "INR",
    "ug/L": "µg/L",
    "mL/min/{1.73_m2}": "mL/min/1.73m2",
}


def csv_frame(kind: str, table: pl.DataFrame) -> pl.DataFrame:
    """The table as written to CSV: helper columns dropped, times formatted."""
    exprs = [as_iso(c).alias(c) for c in _TIMES.get(kind, ())]
    exprs += [as_date(c).alias(c) for c in _DATES.get(kind, ())]
    if kind == "labs":
        exprs.append(pl.col("unit").replace(CSV_UNITS))
    frame = table.with_columns(exprs) if exprs else table
    return frame.select([c for c in frame.columns if not c.startswith("_")])


class CsvExporter:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.files = [out / f"{kind}.csv" for kind in KINDS]
        for path in self.files:
            path.unlink(missing_ok=True)
        self._started: set[str] = set()

    def write(self, tables: dict[str, pl.DataFrame]) -> None:
        for kind in KINDS:
            frame = csv_frame(kind, tables[kind])
            header = kind not in self._started
            with (self.out / f"{kind}.csv").open("ab") as handle:
                frame.write_csv(handle, include_header=header, line_terminator="\n")
            self._started.add(kind)

    def close(self) -> list[Path]:
        return self.files
