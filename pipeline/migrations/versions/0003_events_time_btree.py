"""events: a b-tree on (occurred_at, event_id) for ordered pages, instead of the BRIN index

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 03:25:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_events_time", "events", ["occurred_at", "event_id"], unique=False)
    op.drop_index("ix_events_occurred_at", table_name="events", postgresql_using="brin")


def downgrade() -> None:
    op.create_index(
        "ix_events_occurred_at", "events", ["occurred_at"], unique=False, postgresql_using="brin"
    )
    op.drop_index("ix_events_time", table_name="events")
