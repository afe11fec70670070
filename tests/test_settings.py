"""Settings in one place (``vigie.settings``), one time-zone function, one error tree."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from vigie import settings
from vigie.errors import ConfigurationError, VigieError

ROOT = Path(__file__).parents[1]
# Where a VIGIE_ name may be written: every folder of the project, and the documents.
SCANNED = (
    "vigie", "facts", "engine", "rules", "connectors", "store", "terminology", "synthetic", "api",
    "benchmarks", "tests", "docs", ".ci", "README.md", "dev.py", "pyproject.toml",
)  # fmt: skip
TEXT_SUFFIXES = {".py", ".md", ".toml", ".rules", ".yaml", ".yml", ".lark", ".txt", ".cfg", ""}
VARIABLE = re.compile(r"\bVIGIE_[A-Z][A-Z0-9_]*")


def _texts() -> Iterator[Path]:
    for name in SCANNED:
        path = ROOT / name
        paths = [path] if path.is_file() else sorted(path.rglob("*"))
        for candidate in paths:
            if candidate.is_file() and candidate.suffix in TEXT_SUFFIXES:
                yield candidate


@pytest.fixture
def fresh_zone() -> Iterator[None]:
    """The cached site zone is read again inside the test and after it."""
    settings.reload()
    yield
    settings.reload()


def test_every_vigie_variable_written_anywhere_is_declared() -> None:
    declared = {settings.variable(name) for name in settings.Settings.model_fields}
    seen: dict[str, str] = {}
    for path in _texts():
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in VARIABLE.finditer(text):
            seen.setdefault(match.group(), str(path.relative_to(ROOT)))
    assert {"VIGIE_DATABASE_URL", "VIGIE_TIMEZONE", "VIGIE_HL7_PARSER"} <= set(seen)
    undeclared = {name: where for name, where in seen.items() if name not in declared}
    assert not undeclared, f"declare these in vigie/settings.py: {undeclared}"


def test_settings_are_read_when_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIGIE_HL7_PARSER", raising=False)
    assert settings.value("hl7_parser") == "lazy"
    monkeypatch.setenv("VIGIE_HL7_PARSER", "python-hl7")
    assert settings.value("hl7_parser") == "python-hl7"
    assert settings.current().hl7_parser == "python-hl7"
    monkeypatch.setenv("VIGIE_HL7_PARSER", " ")  # empty counts as unset
    assert settings.value("hl7_parser") == "lazy"


def test_typed_values_and_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VIGIE_SITE_TABLES", str(tmp_path))
    monkeypatch.setenv("VIGIE_REGENERATE_GOLDEN", "1")
    monkeypatch.delenv("VIGIE_DATABASE_URL", raising=False)
    current = settings.current()
    assert current.site_tables == tmp_path
    assert current.regenerate_golden is True
    assert current.database_url is None
    assert settings.choices("fhir_validate") == ("documents", "always", "never")


@pytest.mark.parametrize(
    ("name", "bad", "expected"),
    [
        ("hl7_parser", "hl7apy", "expected 'lazy' or 'python-hl7'"),
        ("fhir_validate", "sometimes", "expected 'documents', 'always' or 'never'"),
        ("timezone", "Mars/Olympus", "expected a time zone name"),
        ("regenerate_golden", "maybe", "expected a boolean"),
    ],
)
def test_a_bad_value_names_the_variable_the_value_and_what_is_expected(
    monkeypatch: pytest.MonkeyPatch, name: str, bad: str, expected: str
) -> None:
    variable = settings.variable(name)
    monkeypatch.setenv(variable, bad)
    with pytest.raises(ConfigurationError) as caught:
        settings.value(name)
    assert str(caught.value).startswith(f"{variable}={bad!r}: {expected}")
    assert (caught.value.variable, caught.value.value) == (variable, bad)
    with pytest.raises(ConfigurationError, match=re.escape(variable)):
        settings.current()


# The time zone ---------------------------------------------------------------------------------


def test_site_timezone_defaults_to_paris(monkeypatch: pytest.MonkeyPatch, fresh_zone: None) -> None:
    monkeypatch.delenv("VIGIE_TIMEZONE")
    settings.reload()
    assert settings.site_timezone() == ZoneInfo("Europe/Paris")


def test_site_timezone_reads_a_good_zone(monkeypatch: pytest.MonkeyPatch, fresh_zone: None) -> None:
    monkeypatch.setenv("VIGIE_TIMEZONE", "America/Cayenne")
    settings.reload()
    assert settings.site_timezone() == ZoneInfo("America/Cayenne")
    monkeypatch.setenv("VIGIE_TIMEZONE", "Indian/Reunion")
    assert settings.site_timezone() == ZoneInfo("America/Cayenne")  # cached until reload
    settings.reload()
    assert settings.site_timezone() == ZoneInfo("Indian/Reunion")


@pytest.mark.parametrize("bad", ["Mars/Olympus", "Europe", "../etc/passwd"])
def test_site_timezone_rejects_a_bad_zone(
    monkeypatch: pytest.MonkeyPatch, fresh_zone: None, bad: str
) -> None:
    monkeypatch.setenv("VIGIE_TIMEZONE", bad)
    settings.reload()
    with pytest.raises(ConfigurationError, match=f"VIGIE_TIMEZONE={re.escape(repr(bad))}"):
        settings.site_timezone()


def test_one_time_zone_function_everywhere(
    monkeypatch: pytest.MonkeyPatch, fresh_zone: None
) -> None:
    """The connectors and the engine use the same function: no silent fallback to UTC."""
    from vigie.connectors import base

    evaluate = importlib.import_module("vigie.engine.evaluate")  # the package shadows the name
    assert base.site_timezone is settings.site_timezone
    assert evaluate.site_timezone is settings.site_timezone
    monkeypatch.setenv("VIGIE_TIMEZONE", "Mars/Olympus")
    settings.reload()
    with pytest.raises(ConfigurationError, match="VIGIE_TIMEZONE"):
        evaluate.format_time(datetime(2024, 1, 1, 12, 0))
    with pytest.raises(ConfigurationError, match="VIGIE_TIMEZONE"):
        base.as_utc(datetime(2024, 1, 1, 12, 0))


# Errors ----------------------------------------------------------------------------------------


# Exceptions that never leave their package: each is turned into a located error at its boundary.
INTERNAL_SIGNALS = {
    "vigie.connectors.fhir.fast.EntryProblem": "a resource's problem, raised as a FeedError entry",
}


def test_every_package_error_derives_from_vigie_error() -> None:
    """Every exception class the package defines (found, not listed) is a ``VigieError``."""
    import importlib
    import inspect
    import pkgutil

    import vigie

    found = []
    for info in pkgutil.walk_packages(vigie.__path__, "vigie."):
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            public = not name.startswith("_") and f"{info.name}.{name}" not in INTERNAL_SIGNALS
            if public and cls.__module__ == info.name and issubclass(cls, BaseException):
                found.append(cls)
    assert len(found) >= 15, found  # FeedError, StoreError, RuleError, EngineError and theirs
    outside = [
        f"{cls.__module__}.{cls.__name__}" for cls in found if not issubclass(cls, VigieError)
    ]
    assert not outside, outside
    assert issubclass(ConfigurationError, ValueError)  # readers used to raise ValueError


def _project_imports(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            modules.add(node.module or "")
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return {module for module in modules if module.split(".")[0] == "vigie"}


def test_settings_and_errors_are_leaves() -> None:
    """vigie.errors imports nothing of the project, vigie.settings only vigie.errors."""
    assert _project_imports(ROOT / "vigie" / "errors.py") == set()
    assert _project_imports(ROOT / "vigie" / "settings.py") == {"vigie.errors"}
    code = "import sys, vigie.settings; print(sorted(m for m in sys.modules if 'vigie.' in m))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "['vigie.errors', 'vigie.settings']"


def test_describe_lists_every_setting_with_type_default_and_doc() -> None:
    rows = {row.variable: row for row in settings.describe()}
    assert set(rows) == {settings.variable(n) for n in settings.Settings.model_fields}
    assert rows["VIGIE_TIMEZONE"].default == "Europe/Paris"
    assert rows["VIGIE_HL7_PARSER"].kind == "lazy|python-hl7"
    assert rows["VIGIE_DATABASE_URL"].default == "unset"
    assert rows["VIGIE_REGENERATE_GOLDEN"].kind == "boolean"
    assert all(row.doc for row in rows.values())
