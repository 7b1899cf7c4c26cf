"""transcripts: the search column indexes what a tsvector can hold, so a long entry stores

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 14:00:00

``to_tsvector('english', content)`` refused an entry whose lexemes and positions pass the 1 MB
tsvector limit, so such a transcript could not be written at all. The column becomes the plain
expression for entries up to 65,000 bytes and ``transcript_search_vector(content)`` (the
leading pieces that fit) for longer ones. PostgreSQL 15 cannot change a generated column's
expression, so the column and its index are made again; every row's vector is recomputed.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = """
CREATE FUNCTION transcript_search_vector(content text) RETURNS tsvector
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    total constant integer := char_length(content);
    start integer := 1;
    result tsvector := ''::tsvector;
    piece_text text;
    piece tsvector;
BEGIN
    WHILE start <= total LOOP
        piece_text := substr(content, start, 65000);
        IF start + 65000 <= total THEN
            piece_text := coalesce(substring(piece_text from '^.*\\s'), piece_text);
        END IF;
        piece := to_tsvector('english', piece_text);
        EXIT WHEN pg_column_size(result) - 4 * length(result)
            + pg_column_size(piece) - 4 * length(piece) > 1048575;
        result := result || piece;
        start := start + char_length(piece_text);
    END LOOP;
    RETURN result;
END
$$"""

EXPRESSION = (
    "CASE WHEN octet_length(content) <= 65000 "
    "THEN to_tsvector('english', content) ELSE transcript_search_vector(content) END"
)

# The old column cannot index an entry past the tsvector limit: say so instead of failing on
# PostgreSQL's "string is too long for tsvector" halfway through the downgrade.
TOO_LONG_FOR_OLD_COLUMN = """
DO $$
BEGIN
    ALTER TABLE transcripts ADD COLUMN search tsvector
        GENERATED ALWAYS AS (to_tsvector('english', content)) STORED NOT NULL;
EXCEPTION WHEN program_limit_exceeded THEN
    RAISE EXCEPTION 'cannot downgrade: some transcripts are too long for the search column of '
        'revision 0004 (its tsvector limit); delete or shorten them first'
        USING ERRCODE = 'program_limit_exceeded';
END
$$"""


def upgrade() -> None:
    op.execute(FUNCTION)
    op.drop_index("ix_transcripts_search", table_name="transcripts", postgresql_using="gin")
    op.drop_column("transcripts", "search")
    op.add_column(
        "transcripts",
        sa.Column(
            "search", postgresql.TSVECTOR(), sa.Computed(EXPRESSION, persisted=True), nullable=False
        ),
    )
    op.create_index(
        "ix_transcripts_search", "transcripts", ["search"], unique=False, postgresql_using="gin"
    )


def downgrade() -> None:
    op.drop_index("ix_transcripts_search", table_name="transcripts", postgresql_using="gin")
    op.drop_column("transcripts", "search")
    op.execute(TOO_LONG_FOR_OLD_COLUMN)
    op.create_index(
        "ix_transcripts_search", "transcripts", ["search"], unique=False, postgresql_using="gin"
    )
    op.execute("DROP FUNCTION transcript_search_vector(text)")
