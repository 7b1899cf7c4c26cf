"""Model checkpoints: ``register_checkpoint`` (insert-if-absent by (model, version); a checkpoint
is immutable, so a different one under an existing (model, version) is a conflict) and
``activate_checkpoint``.

At most one checkpoint is active per (model, framework), enforced by a partial unique index.
Activation is last-write-wins by its version: the newest activation stands, whatever order
activations arrive in or however many workers run them at once. It takes three statements in one
transaction: lock the group's rows in a fixed order (so concurrent activations queue up instead
of missing each other's), deactivate the active checkpoint if this activation is newer, then
activate the target if nothing newer is active. The audit trigger records each change of a
checkpoint (entity ``model_checkpoint``, id ``model_name/version``) with the job's ``actor``.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from pipeline.kinds.base import Row, Target, WriteKind, newest
from pipeline.kinds.fields import STRICT, JsonObject, Key, ShortKey, Text, Version, to_json


class RegisterCheckpoint(BaseModel):
    """Keyword arguments of ``register_checkpoint``."""

    model_config = STRICT
    model_name: Key
    version: ShortKey
    checkpoint_path: Text = Field(min_length=1)
    framework: ShortKey | None = None
    metrics: JsonObject = Field(default_factory=dict)
    training_config: JsonObject = Field(default_factory=dict)


CHECKPOINTS = Target(
    name="model_checkpoints",
    table="model_checkpoints",
    columns=(
        ("model_name", "text"),
        ("version", "text"),
        ("framework", "text"),
        ("checkpoint_path", "text"),
        ("metrics", "text"),
        ("training_config", "text"),
    ),
    key=("model_name", "version"),
    reports=True,
    immutable=True,
    json_columns=("metrics", "training_config"),
    # Activation is not part of a checkpoint's definition: it is not compared.
    sql="""
        WITH inserted AS (
            INSERT INTO model_checkpoints (model_name, version, framework, checkpoint_path,
                                           metrics, training_config)
            SELECT model_name, version, framework, checkpoint_path, CAST(metrics AS jsonb),
                   CAST(training_config AS jsonb)
            FROM {rows}
            ON CONFLICT (model_name, version) DO NOTHING
            RETURNING model_name, version
        )
        SELECT 'present', * FROM (
            SELECT * FROM {keys} EXCEPT SELECT * FROM inserted
        ) d WHERE (SELECT count(*) FROM inserted) < {size}
    """,
)


def _register_rows(p: RegisterCheckpoint, version: int) -> list[Row]:
    return [
        (p.model_name, p.version, p.framework, p.checkpoint_path)
        + (to_json(p.metrics), to_json(p.training_config))
    ]


register_checkpoint = WriteKind(
    "register_checkpoint", RegisterCheckpoint, CHECKPOINTS, _register_rows
)


class ActivateCheckpoint(BaseModel):
    """Keyword arguments of ``activate_checkpoint``."""

    model_config = STRICT
    model_name: Key
    version: ShortKey
    framework: ShortKey | None = None
    activation_version: Version | None = None
    actor: Key | None = None


_TARGETS = """
    WITH v AS (SELECT * FROM {rows}),
    target AS (
        SELECT v.*, m.id AS target_id FROM v
        JOIN model_checkpoints m ON m.model_name = v.model_name AND m.version = v.version
                                AND COALESCE(m.framework, '') = v.framework
    )"""

ACTIVATIONS = Target(
    name="checkpoint_activations",
    table="model_checkpoints",
    follows=CHECKPOINTS,  # activates the checkpoints registered in the same batch
    # framework is '' for none, so the key sorts and compares like any string.
    columns=(
        ("model_name", "text"),
        ("framework", "text"),
        ("version", "text"),
        ("activation_version", "int8"),
        ("actor", "text"),
    ),
    key=("model_name", "framework"),
    merge=newest("activation_version"),
    reports=True,
    actors=("model_name", "version"),
    sql=(
        """
        SELECT m.id FROM model_checkpoints m
        JOIN unnest(CAST(:model_name AS text[]), CAST(:framework AS text[])) AS g(model_name, fw)
          ON m.model_name = g.model_name AND COALESCE(m.framework, '') = g.fw
        ORDER BY m.model_name, COALESCE(m.framework, ''), m.version
        FOR UPDATE OF m
        """,
        # _TARGETS is a constant: no input is formatted into these statements.
        _TARGETS  # noqa: S608
        + """
        UPDATE model_checkpoints m SET is_active = false, updated_at = now()
        FROM target t
        WHERE m.model_name = t.model_name AND COALESCE(m.framework, '') = t.framework
          AND m.is_active AND m.id <> t.target_id
          AND m.activation_version < t.activation_version
        """,
        _TARGETS  # noqa: S608
        + """,
        activated AS (
            UPDATE model_checkpoints m
            SET is_active = true, activation_version = t.activation_version, activated_at = now(),
                updated_at = now()
            FROM target t
            WHERE m.id = t.target_id AND m.activation_version < t.activation_version
              AND NOT EXISTS (
                  SELECT 1 FROM model_checkpoints o
                  WHERE o.model_name = m.model_name
                    AND COALESCE(o.framework, '') = COALESCE(m.framework, '')
                    AND o.is_active AND o.id <> m.id)
            RETURNING m.model_name, m.framework
        )
        SELECT 'missing', * FROM (
            SELECT model_name, framework FROM v EXCEPT SELECT model_name, framework FROM target
        ) m
        UNION ALL
        SELECT 'unchanged', * FROM (
            SELECT model_name, framework FROM target
            EXCEPT SELECT model_name, COALESCE(framework, '') FROM activated
        ) u
        """,
    ),
)


def _activation_rows(p: ActivateCheckpoint, version: int) -> list[Row]:
    activation = version if p.activation_version is None else p.activation_version
    return [(p.model_name, p.framework or "", p.version, activation, p.actor)]


activate_checkpoint = WriteKind(
    "activate_checkpoint", ActivateCheckpoint, ACTIVATIONS, _activation_rows
)
