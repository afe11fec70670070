"""Every setting of Vigie, declared once: the ``VIGIE_*`` environment variables.

``Settings`` names each setting with its type, default and meaning; the variable is
``VIGIE_`` + the field's name in capitals (``hl7_parser`` → ``VIGIE_HL7_PARSER``). An empty
variable counts as unset. A value Vigie cannot use is a ``ConfigurationError`` naming the
variable, the value and what is expected.

Settings are read when used, not once at import, so that a test (``monkeypatch.setenv``) or a
long-running service sees a change: ``value(name)`` reads one variable (one environment lookup;
each distinct value is validated once), ``current()`` reads them all. The hospital's time zone,
read for every time of every message, is cached: ``reload()`` forgets it.

A leaf: imports nothing of the project but ``vigie.errors``.

>>> import os
>>> os.environ["VIGIE_HL7_PARSER"] = "python-hl7"
>>> value("hl7_parser")
'python-hl7'
>>> os.environ["VIGIE_HL7_PARSER"] = "hl7apy"
>>> value("hl7_parser")
Traceback (most recent call last):
...
vigie.errors.ConfigurationError: VIGIE_HL7_PARSER='hl7apy': expected 'lazy' or 'python-hl7'
>>> del os.environ["VIGIE_HL7_PARSER"]
"""

from __future__ import annotations

import os
import re
import types
import typing
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from vigie.errors import ConfigurationError

__all__ = [
    "ENV_PREFIX",
    "Setting",
    "Settings",
    "choices",
    "current",
    "describe",
    "pseudonym_key",
    "reload",
    "site_timezone",
    "value",
    "variable",
]

ENV_PREFIX = "VIGIE_"
# The reference data lives beside the repository: <checkout>/../shared/data.
_SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# The masters Spark accepts (its submit step names the same forms).
_SPARK_MASTER = re.compile(r"local(\[(\d+|\*)(,\d+)?\])?|local-cluster\[.+\]|(spark|k8s)://.+|yarn")


class Settings(BaseSettings):
    """Vigie's settings; each is read from ``VIGIE_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore", frozen=True
    )

    database_url: str | None = Field(
        default=None,
        description="the store, a SQLAlchemy URL; unset: a SQLite file in the user's data folder",
        json_schema_extra={"kind": "URL"},
    )
    timezone: str = Field(
        default="Europe/Paris",
        description="the hospital's time zone: feed times without an offset are read in it",
        json_schema_extra={"kind": "time zone"},
    )
    site_tables: Path | None = Field(
        default=None,
        description="folder of the site's code tables (site_lab_codes.csv, site_drugs.csv)",
    )
    csv_mapping: Path | None = Field(
        default=None,
        description="CSV mapping file (TOML) when --mapping is not given; unset: the synthetic "
        "hospital's layout",
    )
    hl7_parser: Literal["lazy", "python-hl7"] = Field(
        default="lazy",
        description="HL7 v2 reader (same facts and errors; lazy is about 4x faster)",
    )
    fhir_validate: Literal["documents", "always", "never"] = Field(
        default="documents",
        description="which FHIR resources are validated (documents: Bundles and resource "
        "files, not NDJSON lines)",
    )
    spark_master: str = Field(
        default="local[2]",
        description="the Spark master of vigie batch --engine spark: local[N] runs N cores of "
        "this machine; a cluster's URL needs Vigie installed on its executors",
        json_schema_extra={"kind": "URL"},
    )
    shared_data: Path = Field(
        default=_SHARED_DATA,
        description="reference data of the tests, the benchmarks and rules import-ansm",
    )
    pseudonym_key: SecretStr | None = Field(
        default=None,
        description="the secret key of the patient pseudonyms of GET /metrics/export.csv "
        "(HMAC-SHA256; at least 16 characters); unset: the export is refused",
        json_schema_extra={"kind": "secret"},
    )
    test_postgres_url: str = Field(
        default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
        description="the PostgreSQL server of the tests and benchmarks",
        json_schema_extra={"kind": "URL"},
    )
    regenerate_golden: bool = Field(
        default=False,
        description="tests: rewrite the golden files instead of comparing with them",
    )
    schema_examples: int = Field(
        default=15,
        ge=1,
        description="tests: how many requests schemathesis draws per API operation and mode",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError("a time zone name such as 'Europe/Paris' or 'UTC'") from None
        return name

    @field_validator("spark_master")
    @classmethod
    def _spark_master(cls, master: str) -> str:
        if not _SPARK_MASTER.fullmatch(master.strip()):
            raise ValueError(
                "a Spark master: local, local[N], local[*], spark://HOST:PORT, yarn or k8s://URL"
            )
        return master.strip()


class _GivenValues(Settings):
    """``Settings`` validating only the values it is given (no environment, no files)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


_FIELDS = tuple(Settings.model_fields)
_VARIABLES = {name: ENV_PREFIX + name.upper() for name in _FIELDS}


def variable(name: str) -> str:
    """The environment variable of a setting: ``variable("timezone") == "VIGIE_TIMEZONE"``."""
    return _VARIABLES[name]


def value(name: str) -> Any:
    """One setting as the environment holds it now; ``ConfigurationError`` if unusable.

    Cheap enough for every message: one environment lookup, and a cache of validated values.
    """
    return _validated(name, os.environ.get(_VARIABLES[name]))


@lru_cache(maxsize=256)
def _validated(name: str, raw: str | None) -> Any:
    text = raw.strip() if raw is not None else ""
    if not text:
        return Settings.model_fields[name].get_default(call_default_factory=True)
    try:
        return getattr(_GivenValues.model_validate({name: text}), name)
    except ValidationError as error:
        raise ConfigurationError(_VARIABLES[name], str(raw), _expected(error)) from None


def _expected(error: ValidationError) -> str:
    """What pydantic says the value should be, as the end of ``expected ...``."""
    problem = error.errors()[0]
    if problem["type"] == "bool_parsing":
        return "a boolean: 1, true, yes, on or 0, false, no, off"
    message = problem["msg"]
    for prefix in ("Input should be ", "Value error, "):
        message = message.removeprefix(prefix)
    return message


def choices(name: str) -> tuple[str, ...]:
    """The values a setting accepts, when it is a choice: ``choices("hl7_parser")``."""
    annotation = Settings.model_fields[name].annotation
    if typing.get_origin(annotation) is not Literal:
        raise TypeError(f"setting {name!r} is not a choice")
    return tuple(str(choice) for choice in typing.get_args(annotation))


def current() -> Settings:
    """Every setting as the environment holds it now; ``ConfigurationError`` on a bad one."""
    return Settings.model_construct(**{name: value(name) for name in _FIELDS})


@cache
def site_timezone() -> ZoneInfo:
    """The hospital's time zone (``VIGIE_TIMEZONE``, default Europe/Paris).

    Feeds that send times without an offset (HL7 v2 and HPRIM usually, PN13, CSV exports) are
    read in this zone, and alert messages print times in it. ``ConfigurationError`` naming the
    variable if it is not a known zone. Cached (it is read for every time of every message):
    ``reload()`` or ``site_timezone.cache_clear()`` makes the next call read it again.
    """
    return ZoneInfo(value("timezone"))


PSEUDONYM_KEY_MIN = 16  # characters of VIGIE_PSEUDONYM_KEY


def pseudonym_key() -> bytes:
    """The key of the patient pseudonyms (``VIGIE_PSEUDONYM_KEY``), as UTF-8 bytes.

    A ``ConfigurationError`` naming the variable when it is unset or shorter than
    :data:`PSEUDONYM_KEY_MIN` characters; the message never shows the key.
    """
    secret = value("pseudonym_key")
    key = secret.get_secret_value() if secret is not None else ""
    if len(key) < PSEUDONYM_KEY_MIN:
        shown = "(unset)" if not key else f"(hidden, {len(key)} characters)"
        raise ConfigurationError(
            _VARIABLES["pseudonym_key"],
            shown,
            f"a secret of at least {PSEUDONYM_KEY_MIN} characters, the key of the patient "
            "pseudonyms of the metrics export (e.g. python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')",
        )
    return key.encode("utf-8")


def reload() -> None:
    """Forget cached settings: the next reads see the environment as it is now."""
    site_timezone.cache_clear()


@dataclass(frozen=True)
class Setting:
    """One setting as ``vigie --help`` lists it."""

    variable: str
    kind: str
    default: str
    doc: str


def describe() -> list[Setting]:
    """Every setting: variable, type, default and meaning, from the ``Settings`` class."""
    rows = []
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        kind = str(extra.get("kind") or _kind(field.annotation))
        default = _shown(field.get_default(call_default_factory=True))
        rows.append(Setting(_VARIABLES[name], kind, default, field.description or ""))
    return rows


def _shown(default: object) -> str:
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return str(default).lower()
    return str(default)


def _kind(annotation: Any) -> str:
    """A type as a user reads it: ``path``, ``lazy|python-hl7``, ``boolean``, ``text``."""
    if typing.get_origin(annotation) is Literal:
        return "|".join(str(choice) for choice in typing.get_args(annotation))
    if isinstance(annotation, types.UnionType):
        (annotation,) = (arg for arg in typing.get_args(annotation) if arg is not type(None))
        return _kind(annotation)
    names = {bool: "boolean", Path: "path", str: "text", int: "integer"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))
