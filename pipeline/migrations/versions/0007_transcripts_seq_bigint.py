"""transcripts: seq is bigint and may be negative, for the seqs derived from entries' content

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 17:00:00

An ``append_transcripts`` entry sent without ``seq`` gets one derived from its content: a
negative bigint, so it never meets a producer's seq (0 or more). The column becomes bigint (which
rewrites the table and rebuilds its indexes, under an ACCESS EXCLUSIVE lock) and the check keeps
only ``iteration >= 0``. Existing rows keep their seq.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Revision 0006 holds a seq from 0 to 2**31 - 1 only: say so instead of failing on PostgreSQL's
# "integer out of range" or a check violation halfway through the downgrade.
SEQ_FITS_OLD_COLUMN = """
DO $$
BEGIN
    ALTER TABLE transcripts ALTER COLUMN seq TYPE integer;
    ALTER TABLE transcripts ADD CONSTRAINT ck_transcripts_order_non_negative
        CHECK (iteration >= 0 AND seq >= 0);
EXCEPTION WHEN numeric_value_out_of_range OR check_violation THEN
    RAISE EXCEPTION 'cannot downgrade: some transcripts have a seq that revision 0006 cannot '
        'hold (from 0 to 2147483647; a seq derived from an entry''s content is negative); '
        'delete them first'
        USING ERRCODE = 'check_violation';
END
$$"""


def upgrade() -> None:
    op.drop_constraint(op.f("ck_transcripts_order_non_negative"), "transcripts", type_="check")
    op.alter_column(
        "transcripts", "seq", existing_type=sa.Integer(), type_=sa.BigInteger(), nullable=False
    )
    op.create_check_constraint(
        op.f("ck_transcripts_iteration_non_negative"), "transcripts", "iteration >= 0"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_transcripts_iteration_non_negative"), "transcripts", type_="check")
    op.execute(SEQ_FITS_OLD_COLUMN)
