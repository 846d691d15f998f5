"""who holds a case: cases.assignee

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 19:00:00.000000

``cases.assignee`` is the person working the case: set when someone claims it (in_review),
cleared when it is released or escalated, and on a resolved case the person who resolved it.
Existing in_review and resolved cases are filled from the audit trail (the actor of their
latest ``case.in_review`` / ``case.resolved`` event), so an upgrade loses no one's claim.

Self-contained: explicit table definitions, no application imports.
"""

from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('assignee', sa.String(length=128), nullable=True))
        # per-holder counts of cases in review read (status, assignee) alone; the API's
        # ?assignee= list walks (assignee, created_at, id) newest first
        batch_op.create_index('ix_cases_status_assignee', ['status', 'assignee'], unique=False)
        batch_op.create_index(
            'ix_cases_assignee_created', ['assignee', 'created_at', 'id'], unique=False
        )
    op.execute(
        "UPDATE cases SET assignee = ("
        "SELECT a.actor_id FROM audit_events a WHERE a.case_id = cases.id "
        "AND a.action = 'case.' || cases.status ORDER BY a.seq DESC LIMIT 1"
        ") WHERE status IN ('in_review', 'resolved')"
    )


def downgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_index('ix_cases_assignee_created')
        batch_op.drop_index('ix_cases_status_assignee')
        batch_op.drop_column('assignee')
