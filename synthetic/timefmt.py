"""Vectorised time formatting for the exporters (epoch seconds, UTC)."""

from __future__ import annotations

import polars as pl

__all__ = ["as_date", "as_hl7", "as_iso", "as_iso_z"]


def _dt(column: str | pl.Expr) -> pl.Expr:
    expr = pl.col(column) if isinstance(column, str) else column
    return pl.from_epoch(expr, time_unit="s")


def as_iso(column: str | pl.Expr) -> pl.Expr:
    """``2025-01-06T08:30:00+00:00``: the CSV layout reads times without offset in the site's
    zone, so UTC is said explicitly."""
    return _dt(column).dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")


def as_iso_z(column: str | pl.Expr) -> pl.Expr:
    """``2025-01-06T08:30:00Z`` (FHIR needs a zone on dateTime with a time)."""
    return _dt(column).dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def as_date(column: str | pl.Expr) -> pl.Expr:
    return _dt(column).dt.strftime("%Y-%m-%d")


def as_hl7(column: str | pl.Expr, *, date_only: bool = False) -> pl.Expr:
    """HL7 v2 TS ``YYYYMMDDHHMMSS+0000`` (UTC) or DT ``YYYYMMDD``."""
    return _dt(column).dt.strftime("%Y%m%d" if date_only else "%Y%m%d%H%M%S+0000")
