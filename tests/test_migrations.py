"""The store's migrations: an empty database upgraded to the latest revision holds exactly the
models' schema (tables, columns, types, indexes, constraints) with its append-only triggers; a
store made before migrations is upgraded in place; opening a store at the latest revision does
nothing. On SQLite and on PostgreSQL (``store_url``)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import DBAPIError

import vigie.store  # noqa: F401  (every table on the metadata)
from vigie.store import FactStore, ServiceStore, migrations
from vigie.store.database import _Base

APPEND_ONLY = ("alert_event", "decision", "decision_outcome", "audit_log")


def _differences(connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return compare_metadata(context, _Base.metadata)


def _triggers(connection) -> dict[str, set[str]]:
    """The events refused on each table by a trigger."""
    if connection.dialect.name == "sqlite":
        rows = connection.exec_driver_sql(
            "SELECT tbl_name, sql FROM sqlite_master WHERE type = 'trigger'"
        ).all()
        found: dict[str, set[str]] = {}
        for table, sql in rows:
            event = next(e for e in ("update", "delete") if f"BEFORE {e.upper()}" in sql)
            found.setdefault(table, set()).add(event)
        return found
    rows = connection.exec_driver_sql(
        "SELECT event_object_table, event_manipulation FROM information_schema.triggers "
        "WHERE trigger_schema = current_schema()"
    ).all()
    truncates = connection.exec_driver_sql(
        "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND t.tgname LIKE '%%_no_truncate'"
    ).scalars()
    found = {}
    for table, event in rows:
        found.setdefault(table, set()).add(event.lower())
    for table in truncates:
        found.setdefault(table, set()).add("truncate")
    return found


def test_an_empty_database_upgraded_holds_exactly_the_models(store_url: str) -> None:
    engine = create_engine(store_url)
    with engine.begin() as connection:
        assert migrations.current(connection) is None
        assert migrations.upgrade(connection)
    with engine.begin() as connection:
        assert migrations.current(connection) == migrations.HEAD
        tables = set(inspect(connection).get_table_names())
        assert tables == set(_Base.metadata.tables) | {"alembic_version"}
        assert _differences(connection) == []
        assert not migrations.upgrade(connection)  # at head: nothing to do
    with engine.begin() as connection:
        assert _triggers(connection) == {
            table: {"update", "delete"}
            | ({"truncate"} if engine.dialect.name == "postgresql" else set())
            for table in APPEND_ONLY
        }
    engine.dispose()


def test_the_triggers_refuse_a_change_of_a_row(store_url: str) -> None:
    with FactStore(store_url) as facts:
        service = ServiceStore(facts)
        service.add_user("admin.a", ["admin"])
        from vigie.store import AuditEntry

        service.audit(AuditEntry("admin.a", ("admin",), "read", "/audit"))
        for statement in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log"):
            refused = pytest.raises(DBAPIError, match="audit_log is append-only")
            with refused, facts.engine.begin() as connection:
                connection.execute(text(statement))
        if facts.engine.dialect.name == "postgresql":
            with pytest.raises(DBAPIError, match="append-only"), facts.engine.begin() as c:
                c.execute(text("TRUNCATE audit_log"))
        assert service.audit_size() == 1


def test_a_store_made_before_migrations_is_upgraded_in_place(store_url: str) -> None:
    """A store of the day before (``create_all`` of the fact and alert tables, no
    ``alembic_version``, no ``ingest_run`` column) keeps its rows and gets the rest."""
    engine = create_engine(store_url)
    old = [
        _Base.metadata.tables[name]
        for name in ("raw_message", "fact", "dead_letter", "store_meta", "alert", "alert_event")
    ]
    with engine.begin() as connection:
        _Base.metadata.create_all(connection, tables=old)
        connection.exec_driver_sql("DROP INDEX ix_raw_message_unfinished")
        connection.exec_driver_sql("ALTER TABLE raw_message DROP COLUMN ingest_run")
        connection.exec_driver_sql(
            "INSERT INTO store_meta (key, value) VALUES ('schema_version', '2')"
        )
    engine.dispose()
    with FactStore(store_url) as facts, facts.engine.begin() as connection:
        assert migrations.current(connection) == migrations.HEAD
        assert _differences(connection) == []
        assert set(_triggers(connection)) == set(APPEND_ONLY)
        assert ServiceStore(facts).users() == []


def test_reset_starts_again_from_the_first_revision(store_url: str) -> None:
    with FactStore(store_url) as facts:
        ServiceStore(facts).add_user("pharm.a", ["pharmacist"])
        facts.reset()
        assert ServiceStore(facts).users() == []
        with facts.engine.begin() as connection:
            assert migrations.current(connection) == migrations.HEAD


def test_a_store_at_0002_gets_the_cds_card_table_and_keeps_its_rows(store_url: str) -> None:
    scripts = migrations.runner._scripts()

    def to_0002(revision: object, _context: MigrationContext) -> object:
        return scripts._upgrade_revs("0002", revision)

    engine = create_engine(store_url)
    with engine.begin() as connection:
        context = MigrationContext.configure(connection, opts={"script": scripts, "fn": to_0002})
        with Operations.context(context):
            context.run_migrations()
    with engine.begin() as connection:
        assert migrations.current(connection) == "0002"
        assert "cds_card" not in inspect(connection).get_table_names()
        connection.exec_driver_sql(
            "INSERT INTO service_user (name, active, created_at) "
            "VALUES ('pharm.a', true, '2026-12-06 20:00:00')"
        )
    engine.dispose()
    with FactStore(store_url) as facts:
        with facts.engine.begin() as connection:
            assert migrations.current(connection) == migrations.HEAD == "0003"
            assert "cds_card" in inspect(connection).get_table_names()
            assert _differences(connection) == []
        assert [user.name for user in ServiceStore(facts).users()] == ["pharm.a"]
