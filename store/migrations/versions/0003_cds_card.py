"""The CDS Hooks cards answered (``vigie.store.service.CdsCardRow``): kept in the store, so that
feedback on a card finds its alert in any of the service's processes and after a restart.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if "cds_card" in sa.inspect(bind).get_table_names():
        return  # made from the models (a table dropped by hand and made again)
    op.create_table(
        "cds_card",
        sa.Column("uuid", sa.String(length=36), primary_key=True),
        sa.Column("service_id", sa.String(length=64), nullable=False),
        sa.Column("hook_instance", sa.Text(), nullable=False),
        sa.Column("alert_id", sa.String(length=64), nullable=False),
        sa.Column("rule_id", sa.String(length=128), nullable=False),
        sa.Column("patient_id", sa.String(length=128), nullable=False),
        sa.Column("suggestions", sa.JSON(), nullable=False),
        sa.Column("override_codes", sa.JSON(), nullable=False),
        sa.Column("alert", sa.JSON(), nullable=False),
        sa.Column("issued_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_cds_card_issued_at", "cds_card", ["issued_at"])


def downgrade() -> None:
    op.drop_index("ix_cds_card_issued_at", table_name="cds_card")
    op.drop_table("cds_card")
