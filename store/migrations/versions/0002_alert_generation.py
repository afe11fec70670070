"""The alerts' generation: one row that every write of the alerts increments in its
transaction, which a reader caching what it computed from the alerts (the service's worklist
pages) compares (``vigie.store.alerts.AlertGenerationRow``).

The row starts at the time it is made in microseconds, so that a store made again does not
give a number back that a reader saw before.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if "alert_generation" in sa.inspect(bind).get_table_names():
        return  # made from the models (a table dropped by hand and made again)
    table = op.create_table(
        "alert_generation",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
    )
    first = int(datetime.now(UTC).timestamp() * 1_000_000)
    op.bulk_insert(table, [{"id": 1, "generation": first}])


def downgrade() -> None:
    op.drop_table("alert_generation")
