"""the classifier's labels on the case row (per-model statistics without reading JSON)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 11:45:00.000000

``cases.predicted_category``, ``predicted_queue`` and ``predicted_priority`` hold the current
suggestion's classifier labels (NULL where it abstained), so override rate and
precision-at-close per model version are one aggregate over narrow columns instead of a read of
every suggestion body. Existing rows are filled from their current suggestion in one UPDATE.

Self-contained: explicit table definitions, no application imports.
"""

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

TARGETS = ('category', 'queue', 'priority')


def upgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        for target in TARGETS:
            batch_op.add_column(sa.Column(f'predicted_{target}', sa.String(length=64), nullable=True))
    bind = op.get_bind()
    if bind.dialect.name == 'postgresql':
        sets = ', '.join(
            f"predicted_{t} = s.body -> 'classifier' -> '{t}' ->> 'label'" for t in TARGETS
        )
        op.execute(
            f"UPDATE cases SET {sets} FROM suggestions s "
            "WHERE s.case_id = cases.id AND s.revision = cases.suggestion_revision "
            "AND cases.suggestion_revision > 0"
        )
    else:  # SQLite: json_extract gives NULL for a JSON null (an abstention) and a missing key
        sets = ', '.join(
            f"predicted_{t} = (SELECT json_extract(s.body, '$.classifier.{t}.label') "
            "FROM suggestions s WHERE s.case_id = cases.id "
            "AND s.revision = cases.suggestion_revision)"
            for t in TARGETS
        )
        op.execute(f"UPDATE cases SET {sets} WHERE suggestion_revision > 0")


def downgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        for target in TARGETS:
            batch_op.drop_column(f'predicted_{target}')
