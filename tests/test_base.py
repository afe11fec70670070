from datetime import UTC, datetime, timedelta, timezone

import pytest

from vigie.connectors import base
from vigie.connectors.base import FeedError, as_utc, read_text
from vigie.errors import ConfigurationError


@pytest.fixture
def paris(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VIGIE_TIMEZONE", "Europe/Paris")
    base.site_timezone.cache_clear()
    yield
    base.site_timezone.cache_clear()


def test_times_without_offset_are_read_in_the_site_zone(paris: None) -> None:
    assert as_utc(datetime(2024, 7, 1, 12, 0)) == datetime(2024, 7, 1, 10, 0)  # CEST
    assert as_utc(datetime(2024, 1, 15, 12, 0)) == datetime(2024, 1, 15, 11, 0)  # CET
    aware = datetime(2024, 7, 1, 12, 0, tzinfo=timezone(timedelta(hours=-4)))
    assert as_utc(aware) == datetime(2024, 7, 1, 16, 0)
    assert as_utc(datetime(2024, 7, 1, 12, 0, tzinfo=UTC)).tzinfo is None


def test_unknown_zone_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIE_TIMEZONE", "Mars/Olympus")
    base.site_timezone.cache_clear()
    with pytest.raises(ConfigurationError, match="VIGIE_TIMEZONE='Mars/Olympus': expected"):
        as_utc(datetime(2024, 1, 1))
    base.site_timezone.cache_clear()


def test_read_text_names_the_bad_byte() -> None:
    assert read_text("é".encode("latin-1"), "a.hl7", ("utf-8", "latin-1")) == ("é", "latin-1")
    with pytest.raises(FeedError, match=r"a\.hl7: byte 2: expected text in utf-8"):
        read_text(b"ok\xff", "a.hl7")


def test_feed_error_reads_like_a_sentence() -> None:
    error = FeedError("adt.hl7", "PID-7", "a date YYYYMMDD", message_id="M1", found="2024-13-45")
    assert str(error) == "adt.hl7: message M1: PID-7: expected a date YYYYMMDD, got '2024-13-45'"
