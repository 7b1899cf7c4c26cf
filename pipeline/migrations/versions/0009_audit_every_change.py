"""audit every change of the audited tables, by whoever made it; updated_at kept by the database

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 14:00:00

Replaces the audit rows four write kinds wrote themselves with statement-level triggers (one
per table and operation, with transition tables), so inserts, updates and deletes of every
audited table are recorded, including writes made outside the pipeline. ``audit_log`` gains
``db_user``, ``application`` and ``transaction_id``. Tables whose rows change get an
``updated_at`` (added where missing) that a row trigger keeps current when a writer does not set
it. The tables and the SQL are frozen here; ``pipeline.schema.audit`` describes them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AUDITED = {
    "projects": ("project", ("project_id",)),
    "rubrics": ("rubric", ("project_id", "rubric_id", "version")),
    "rubric_principles": ("rubric_principle", ("principle_id",)),
    "nodes": ("node", ("project_id", "node_id")),
    "principle_scores": ("principle_score", ("project_id", "node_id", "principle_id")),
    "labeled_samples": ("labeled_sample", ("sample_id",)),
    "claims": ("claim", ("external_id",)),
    "verification_results": ("verification", ("result_id",)),
    "consensus_decisions": ("consensus", ("claim_id",)),
    "training_data": ("training_data", ("id",)),
    "model_checkpoints": ("model_checkpoint", ("model_name", "version")),
    "service_health": ("service_health", ("service_name", "instance_id")),
}
NEW_UPDATED_AT = (
    "verification_results",
    "training_data",
    "model_checkpoints",
    "service_health",
    "dead_letters",
)
TOUCHED = ("projects", "nodes", "claims", "consensus_decisions", *NEW_UPDATED_AT)

# Inserts and deletes are static SQL over the rows as JSON (plpgsql plans a trigger function's
# statements once per table and session). An update is audited per row by joining the old and
# new rows on the key (FULL JOIN: a changed key shows as a row gone and a row come) and keeping
# the rows where a column that is not quiet differs, compared as columns, which is several times
# cheaper per row than comparing JSON; that statement is dynamic SQL, since its columns vary by
# table. A writer that knows its statement changes quiet columns only (the pipeline's score
# batches) says so in pipeline.audit_changes, and the update is not even looked at; the hint
# is cleared by the statement it was set for.
AUDIT_FUNCTION = r"""
CREATE FUNCTION pipeline_audit() RETURNS trigger
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    entity constant text := TG_ARGV[0];
    k1 constant text := TG_ARGV[1];
    k2 constant text := TG_ARGV[2];
    k3 constant text := TG_ARGV[3];
    quiet constant text[] := ARRAY(
        SELECT substr(q, length(TG_TABLE_NAME) + 2)
        FROM unnest(string_to_array(current_setting('pipeline.audit_quiet', true), ',')) q
        WHERE q LIKE TG_TABLE_NAME || '.%');
    changes constant text[] := ARRAY(
        SELECT substr(q, length(TG_TABLE_NAME) + 2)
        FROM unnest(string_to_array(current_setting('pipeline.audit_changes', true), ',')) q
        WHERE q LIKE TG_TABLE_NAME || '.%');
    actors constant jsonb := nullif(current_setting('pipeline.actors', true), '')::jsonb -> entity;
    application constant text := nullif(current_setting('application_name'), '');
    id_of text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO audit_log (entity_type, entity_id, action, changes, actor, db_user,
                               application, transaction_id)
        SELECT entity, e.id, 'insert', jsonb_build_object('after', e.j - 'updated_at'),
               actors ->> e.id, session_user, application, txid_current()
        FROM (SELECT concat_ws('/', j ->> k1, j ->> k2, j ->> k3) AS id, j
              FROM (SELECT to_jsonb(r) AS j FROM new_rows r) x) e;
        RETURN NULL;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO audit_log (entity_type, entity_id, action, changes, actor, db_user,
                               application, transaction_id)
        SELECT entity, e.id, 'delete', jsonb_build_object('before', e.j - 'updated_at'),
               actors ->> e.id, session_user, application, txid_current()
        FROM (SELECT concat_ws('/', j ->> k1, j ->> k2, j ->> k3) AS id, j
              FROM (SELECT to_jsonb(r) AS j FROM old_rows r) x) e;
        RETURN NULL;
    END IF;
    IF changes <> '{}' THEN
        -- A hint is for the one statement it was set before.
        PERFORM set_config('pipeline.audit_changes', '', true);
        IF changes <@ quiet THEN
            RETURN NULL;
        END IF;
    END IF;
    SELECT 'concat_ws(''/'', ' || string_agg(format('%%1$s.%I', k), ', ') || ')'
    INTO id_of FROM unnest(TG_ARGV[1:]) k;
    EXECUTE format(
        'INSERT INTO audit_log (entity_type, entity_id, action, changes, actor, db_user,'
        ' application, transaction_id)'
        ' SELECT $1, p.id, ''update'', CASE'
        ' WHEN p.o IS NULL THEN jsonb_build_object(''after'', p.n)'
        ' WHEN p.n IS NULL THEN jsonb_build_object(''before'', p.o)'
        ' ELSE jsonb_build_object('
        '  ''before'', (SELECT jsonb_object_agg(key, value) FROM jsonb_each(p.o)'
        '              WHERE p.n -> key IS DISTINCT FROM value),'
        '  ''after'', (SELECT jsonb_object_agg(key, value) FROM jsonb_each(p.n)'
        '             WHERE p.o -> key IS DISTINCT FROM value)) END,'
        ' $2 ->> p.id, session_user, $3, txid_current()'
        ' FROM (SELECT coalesce(nullif(%s, ''''), %s) AS id,'
        ' to_jsonb(o) - ''updated_at'' AS o, to_jsonb(n) - ''updated_at'' AS n'
        ' FROM old_rows o FULL JOIN new_rows n ON %s WHERE %s OFFSET 0) p',
        format(id_of, 'n'), format(id_of, 'o'),
        (SELECT string_agg(format('o.%1$I = n.%1$I', k), ' AND ') FROM unnest(TG_ARGV[1:]) k),
        (SELECT format('(%s) IS DISTINCT FROM (%s)',
                       string_agg('o.' || c, ', '), string_agg('n.' || c, ', '))
         FROM (SELECT quote_ident(attname) AS c FROM pg_attribute
               WHERE attrelid = TG_RELID AND attnum > 0 AND NOT attisdropped
                 AND attgenerated = '' AND attname <> 'updated_at'
                 AND attname <> ALL (quiet)
               ORDER BY attnum) a))
    USING entity, actors, application;
    RETURN NULL;
END
$$"""

TOUCH_FUNCTION = """
CREATE FUNCTION pipeline_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$"""

EVENTS = {
    "insert": "AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows",
    "update": "AFTER UPDATE ON {table} REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "delete": "AFTER DELETE ON {table} REFERENCING OLD TABLE AS old_rows",
}


def upgrade() -> None:
    for table in NEW_UPDATED_AT:
        op.add_column(
            table,
            sa.Column(
                "updated_at",
                sa.DateTime(timezone=True),
                server_default=sa.text("now()"),
                nullable=False,
            ),
        )
    op.add_column("audit_log", sa.Column("db_user", sa.Text(), nullable=True))
    op.add_column("audit_log", sa.Column("application", sa.Text(), nullable=True))
    op.add_column("audit_log", sa.Column("transaction_id", sa.BigInteger(), nullable=True))
    op.execute(TOUCH_FUNCTION)
    for table in TOUCHED:
        op.execute(
            f"CREATE TRIGGER touch_updated_at BEFORE UPDATE ON {table} FOR EACH ROW "
            "WHEN (NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at) "
            "EXECUTE FUNCTION pipeline_touch_updated_at()"
        )
    op.execute(AUDIT_FUNCTION)
    for table, (entity, keys) in AUDITED.items():
        arguments = ", ".join(f"'{a}'" for a in (entity, *keys))
        for name, event in EVENTS.items():
            op.execute(
                f"CREATE TRIGGER audit_{name} {event.format(table=table)} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION pipeline_audit({arguments})"
            )


def downgrade() -> None:
    for table in AUDITED:
        for name in EVENTS:
            op.execute(f"DROP TRIGGER audit_{name} ON {table}")
    op.execute("DROP FUNCTION pipeline_audit()")
    for table in TOUCHED:
        op.execute(f"DROP TRIGGER touch_updated_at ON {table}")
    op.execute("DROP FUNCTION pipeline_touch_updated_at()")
    for column in ("transaction_id", "application", "db_user"):
        op.drop_column("audit_log", column)
    for table in NEW_UPDATED_AT:
        op.drop_column(table, "updated_at")
