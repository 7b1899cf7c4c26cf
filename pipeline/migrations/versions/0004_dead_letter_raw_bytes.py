"""dead_letters: the raw bytes of a job that never decoded

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("dead_letters", sa.Column("raw", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    op.drop_column("dead_letters", "raw")
