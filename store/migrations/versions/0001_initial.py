"""Initial schema: the fact store, the alerts and the service.

A store made before migrations (tables made by ``create_all``: the fact store's, the alerts')
is taken as it is: only what it lacks is made (a table, the ``raw_message.ingest_run`` column
of a store of the day before it, an index, a trigger). The tables are written out here, frozen:
this revision does not read the models, which later revisions change.

Revision ID: 0001
Revises:
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

schema = sa.MetaData()
_UNFINISHED = sa.text("status = 'received'")

# Fact store ------------------------------------------------------------------------------------

sa.Table(
    "raw_message",
    schema,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("feed", sa.String(32), nullable=False),
    sa.Column("message_id", sa.String(512), nullable=False),
    sa.Column("document", sa.Text(), nullable=False),
    sa.Column("position", sa.Text(), nullable=True),
    sa.Column("encoding", sa.String(32), nullable=True),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("content", sa.LargeBinary(), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("fact_count", sa.Integer(), nullable=False),
    sa.Column("version_time", sa.DateTime(), nullable=True),
    sa.Column("ingest_run", sa.Integer(), nullable=True),
    sa.UniqueConstraint("feed", "message_id", "sha256"),
    sa.Index(
        "ix_raw_message_unfinished",
        "ingest_run",
        sqlite_where=_UNFINISHED,
        postgresql_where=_UNFINISHED,
    ),
)
sa.Table(
    "ingest_run",
    schema,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer(), nullable=False),
    sa.Column("process_start", sa.String(32), nullable=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Table(
    "dead_letter",
    schema,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("raw_message_id", sa.Integer(), sa.ForeignKey("raw_message.id"), nullable=False),
    sa.Column("error", sa.Text(), nullable=False),
    sa.Column("position", sa.Text(), nullable=True),
    sa.Column("fatal", sa.Boolean(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_dead_letter_raw_message_id", "raw_message_id"),
)
sa.Table(
    "fact",
    schema,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("fact_id", sa.String(512), primary_key=True),
    sa.Column("patient_id", sa.String(128), nullable=False),
    sa.Column("raw_message_id", sa.Integer(), sa.ForeignKey("raw_message.id"), nullable=True),
    sa.Column("payload", sa.JSON(), nullable=False),
    sa.Column("version_time", sa.DateTime(), nullable=True),
    sa.Column("retracted", sa.Boolean(), nullable=False),
    sa.Index("ix_fact_patient_kind", "patient_id", "kind"),
    sa.Index("ix_fact_raw_message_id", "raw_message_id"),
)
sa.Table(
    "store_meta",
    schema,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text(), nullable=False),
)

# Alerts ----------------------------------------------------------------------------------------

sa.Table(
    "alert",
    schema,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("rule_id", sa.String(128), nullable=False),
    sa.Column("rule_version", sa.Integer(), nullable=False),
    sa.Column("patient_id", sa.String(128), nullable=False),
    sa.Column("ward", sa.String(128), nullable=True),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("priority", sa.Float(), nullable=True),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("raised", sa.Boolean(), nullable=False),
    sa.Column("evidence_key", sa.String(64), nullable=False),
    sa.Column("first_seen", sa.DateTime(), nullable=False),
    sa.Column("last_seen", sa.DateTime(), nullable=False),
    sa.Column("status_changed_at", sa.DateTime(), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("reason_code", sa.String(32), nullable=True),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("payload", sa.JSON(), nullable=False),
    sa.Index("ix_alert_patient", "patient_id"),
    sa.Index("ix_alert_status_ward", "status", "ward"),
)
sa.Table(
    "alert_event",
    schema,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("alert_id", sa.String(64), sa.ForeignKey("alert.id"), nullable=False),
    sa.Column("at", sa.DateTime(), nullable=False),
    sa.Column("from_status", sa.String(24), nullable=True),
    sa.Column("to_status", sa.String(24), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("reason_code", sa.String(32), nullable=True),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("evidence_key", sa.String(64), nullable=False),
    sa.Column("detail", sa.JSON(none_as_null=True), nullable=True),
    sa.Index("ix_alert_event_alert_id", "alert_id"),
)

# Service ---------------------------------------------------------------------------------------

sa.Table(
    "service_user",
    schema,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("active", sa.Boolean(), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
)
sa.Table(
    "service_user_role",
    schema,
    sa.Column("user_id", sa.Integer(), sa.ForeignKey("service_user.id"), primary_key=True),
    sa.Column("role", sa.String(32), primary_key=True),
)
sa.Table(
    "api_token",
    schema,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.Integer(), sa.ForeignKey("service_user.id"), nullable=False),
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("revoked_at", sa.DateTime(), nullable=True),
    sa.Index("ix_api_token_user_id", "user_id"),
)
sa.Table(
    "ward",
    schema,
    sa.Column("hospital", sa.String(64), primary_key=True),
    sa.Column("code", sa.String(128), primary_key=True),
    sa.Column("label", sa.String(255), nullable=False),
    sa.Column("beds", sa.Integer(), nullable=False),
    sa.Column("updated_at", sa.DateTime(), nullable=False),
    sa.Column("updated_by", sa.String(128), nullable=False),
)
sa.Table(
    "decision",
    schema,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.Integer(), nullable=False, unique=True),
    sa.Column("alert_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("decided_at", sa.DateTime(), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("rule_id", sa.String(128), nullable=False),
    sa.Column("patient_id", sa.String(128), nullable=False),
    sa.Column("ward", sa.String(128), nullable=True),
    sa.Column("problem_code", sa.String(8), nullable=True),
    sa.Column("intervention_code", sa.String(8), nullable=True),
    sa.Column("dismiss_reason", sa.String(32), nullable=True),
    sa.Column("comment", sa.Text(), nullable=True),
    sa.Column("prescriber_contacted", sa.Boolean(), nullable=True),
    sa.Index("ix_decision_alert_id", "alert_id"),
    sa.Index("ix_decision_decided_at", "decided_at"),
)
sa.Table(
    "decision_outcome",
    schema,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column(
        "decision_id", sa.Integer(), sa.ForeignKey("decision.id"), nullable=False, unique=True
    ),
    sa.Column("outcome", sa.String(24), nullable=False),
    sa.Column("comment", sa.Text(), nullable=True),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("at", sa.DateTime(), nullable=False),
)
sa.Table(
    "site_config_version",
    schema,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("text", sa.Text(), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("author", sa.String(128), nullable=False),
    sa.Column("comment", sa.Text(), nullable=True),
    sa.Column("created_at", sa.DateTime(), nullable=False),
)
sa.Table(
    "rule_pack_version",
    schema,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("source", sa.Text(), nullable=False),
    sa.Column("text", sa.Text(), nullable=False),
    sa.Column("first_used", sa.DateTime(), nullable=False),
    sa.UniqueConstraint("name", "version", "sha256"),
)
sa.Table(
    "audit_log",
    schema,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("roles", sa.String(128), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("resource", sa.String(512), nullable=False),
    sa.Column("patient_id", sa.String(128), nullable=True),
    sa.Column("detail", sa.JSON(none_as_null=True), nullable=True),
    sa.Index("ix_audit_log_at", "at"),
    sa.Index("ix_audit_log_patient", "patient_id"),
)

# The database refuses to change these logs, whoever connects.
APPEND_ONLY = ("alert_event", "decision", "decision_outcome", "audit_log")


def _append_only(table: str, dialect: str) -> list[str]:
    refusal = f"{table} is append-only"
    if dialect == "sqlite":
        return [
            f"CREATE TRIGGER IF NOT EXISTS {table}_no_{what} BEFORE {what.upper()} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{refusal}'); END"
            for what in ("update", "delete")
        ]
    if dialect == "postgresql":
        return [
            f"CREATE OR REPLACE FUNCTION {table}_append_only() RETURNS trigger "
            f"LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '{refusal}'; END $$",
            f"DROP TRIGGER IF EXISTS {table}_no_change ON {table}",
            f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()",
            f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}",
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_append_only()",
        ]
    return []


def upgrade() -> None:
    bind = op.get_bind()
    existing = set(sa.inspect(bind).get_table_names())
    for table in schema.sorted_tables:
        if table.name not in existing:
            table.create(bind)  # with its indexes
    if "raw_message" in existing:  # a store made before migrations
        columns = {c["name"] for c in sa.inspect(bind).get_columns("raw_message")}
        if "ingest_run" not in columns:  # ... and before concurrent ingests
            op.add_column("raw_message", sa.Column("ingest_run", sa.Integer(), nullable=True))
        for index in schema.tables["raw_message"].indexes:
            index.create(bind, checkfirst=True)
    for name in APPEND_ONLY:
        for statement in _append_only(name, bind.dialect.name):
            bind.exec_driver_sql(statement)


def downgrade() -> None:
    bind = op.get_bind()
    schema.drop_all(bind)
    if bind.dialect.name == "postgresql":
        for name in APPEND_ONLY:
            bind.exec_driver_sql(f"DROP FUNCTION IF EXISTS {name}_append_only()")
