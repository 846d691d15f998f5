"""console dashboard: daily roll-ups and the audit indexes they read through

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 10:50:00.000000

Self-contained: explicit table definitions, no application imports.
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dashboard_days',
    sa.Column('day', sa.String(length=10), nullable=False),
    sa.Column('stats', sa.Text(), nullable=False),
    sa.Column('computed_at', sa.String(length=32), nullable=False),
    sa.PrimaryKeyConstraint('day', name=op.f('pk_dashboard_days'))
    )
    op.create_table('dashboard_case_facts',
    sa.Column('case_id', sa.String(length=26), nullable=False),
    sa.Column('day', sa.String(length=10), nullable=False),
    sa.Column('facts', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('case_id', name=op.f('pk_dashboard_case_facts'))
    )
    with op.batch_alter_table('dashboard_case_facts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dashboard_case_facts_day'), ['day'], unique=False)
    op.create_table('dashboard_rollup_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('through_seq', sa.BigInteger(), nullable=False),
    sa.Column('format', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.String(length=32), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dashboard_rollup_state'))
    )
    # The state row exists from the start (format 0: nothing rolled up yet), so concurrent
    # first refreshes serialise on its row lock instead of racing to insert it.
    op.execute(
        "INSERT INTO dashboard_rollup_state (id, through_seq, format, updated_at) "
        "VALUES (1, 0, 0, '1970-01-01T00:00:00.000000Z')"
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index('ix_audit_action_ts', ['action', 'ts'], unique=False)
        batch_op.create_index('ix_audit_case_action', ['case_id', 'action'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_case_action')
        batch_op.drop_index('ix_audit_action_ts')
    op.drop_table('dashboard_rollup_state')
    with op.batch_alter_table('dashboard_case_facts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dashboard_case_facts_day'))
    op.drop_table('dashboard_case_facts')
    op.drop_table('dashboard_days')
