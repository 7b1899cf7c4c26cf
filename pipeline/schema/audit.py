"""What the database audits and timestamps by itself, for every writer.

Migration 0009 installs two trigger functions. ``pipeline_audit()`` runs once per statement
(AFTER … FOR EACH STATEMENT, with transition tables) on each table of :data:`AUDITED` and writes
one ``audit_log`` row per inserted, updated or deleted row, set-based, in the transaction of the
change: whoever made it, the pipeline or ``psql``. ``pipeline_touch_updated_at()`` sets
``updated_at = now()`` on an updated row of each table of :data:`TOUCHED` whose writer left it
unchanged (a row trigger whose ``WHEN`` clause keeps it from running for the pipeline's own
statements, which set it).

An audit row's ``changes`` is ``{"after": row}`` for an insert, ``{"before": row}`` for a delete
and ``{"before": {...}, "after": {...}}`` with the changed columns only for an update; an update
that changes nothing but ``updated_at`` writes none. ``entity_id`` is the key columns joined
with ``/``. ``actor`` is what the job named (see :data:`ACTORS_SETTING`), ``db_user`` the
database role, ``application`` the client's ``application_name`` (``pipeline`` for the pipeline's
connections), ``transaction_id`` groups the rows of one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

AUDITED: dict[str, tuple[str, tuple[str, ...]]] = {
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
"""Audited table → (entity type, key columns of the entity id)."""

TOUCHED = (
    "projects",
    "nodes",
    "claims",
    "verification_results",
    "consensus_decisions",
    "training_data",
    "model_checkpoints",
    "service_health",
    "dead_letters",
)
"""Tables with an ``updated_at`` the database keeps current for every writer."""

ACTORS_SETTING = "pipeline.actors"
"""A transaction-local setting, JSON ``{entity type: {entity id: actor}}``: a statement of the
pipeline that carries actors sets it first, and the audit trigger takes each row's actor from it.
"""

QUIET_SETTING = "pipeline.audit_quiet"
"""A connection setting, ``table.column,…``: an update of a row that changes only these columns
(and ``updated_at``) writes no audit row. Only the pipeline's connections set it; see
``Settings.audit_score_updates``."""

CHANGES_SETTING = "pipeline.audit_changes"
"""A transaction-local hint, ``table.column,…``: the columns the next update of that table may
change. When they are all quiet, the trigger skips the update without reading its rows (the
pipeline's score batches); the trigger clears it."""

SCORE_COLUMNS = (
    "nodes.rubric_score",
    "nodes.rubric_score_version",
    "nodes.ucb_score",
    "nodes.ucb_score_version",
)
"""The columns a score-only update changes, quiet unless ``audit_score_updates`` is on."""


def entity_id(values: Sequence[object]) -> str:
    """The audit entity id of a row's key values, as the trigger writes it (``concat_ws('/')``)."""
    return "/".join(str(v) for v in values if v is not None)
