"""indexes for the list reads: claims of a type newest first, the rows of a training batch

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 13:40:00

``ix_claims_type_recent`` (claim_type, created_at DESC, id DESC) replaces ``ix_claims_claim_type``,
whose column it leads with; ``ix_training_data_batch`` serves a batch's rows without its
framework, which ``ix_training_data_framework_batch`` needs first.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_claims_type_recent",
        "claims",
        ["claim_type", sa.text("created_at DESC"), sa.text("id DESC")],
    )
    op.drop_index("ix_claims_claim_type", table_name="claims")
    op.create_index(
        "ix_training_data_batch", "training_data", ["training_batch_id", "created_at", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_training_data_batch", table_name="training_data")
    op.create_index("ix_claims_claim_type", "claims", ["claim_type"])
    op.drop_index("ix_claims_type_recent", table_name="claims")
