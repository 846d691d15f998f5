"""model jobs (training, retraining, background evaluation) kept in the database

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 08:00:00.000000

Self-contained: explicit table definitions, no application imports.
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('model_jobs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('started_by', sa.String(length=128), nullable=False),
    sa.Column('started_at', sa.String(length=32), nullable=False),
    sa.Column('runner', sa.String(length=128), nullable=False),
    sa.Column('heartbeat_at', sa.String(length=32), nullable=False),
    sa.Column('progress', sa.String(length=500), nullable=True),
    sa.Column('progress_at', sa.String(length=32), nullable=True),
    sa.Column('finished_at', sa.String(length=32), nullable=True),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('cancel_requested_by', sa.String(length=128), nullable=True),
    sa.Column('cancel_requested_at', sa.String(length=32), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_jobs'))
    )
    with op.batch_alter_table('model_jobs', schema=None) as batch_op:
        batch_op.create_index('ix_model_jobs_kind_id', ['kind', 'id'], unique=False)
        # At most one running job per kind, whichever process starts it.
        batch_op.create_index(
            'uq_model_jobs_running', ['kind'], unique=True,
            sqlite_where=sa.text("status = 'running'"),
            postgresql_where=sa.text("status = 'running'"),
        )


def downgrade() -> None:
    with op.batch_alter_table('model_jobs', schema=None) as batch_op:
        batch_op.drop_index('uq_model_jobs_running')
        batch_op.drop_index('ix_model_jobs_kind_id')
    op.drop_table('model_jobs')
