"""console users and sessions

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 17:30:00.000000
"""

from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('console_users',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('authorities', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.String(length=32), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=True),
    sa.Column('password_changed_at', sa.String(length=32), nullable=False),
    sa.Column('last_sign_in_at', sa.String(length=32), nullable=True),
    sa.Column('disabled_at', sa.String(length=32), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_console_users')),
    sa.UniqueConstraint('username', name=op.f('uq_console_users_username'))
    )
    op.create_table('console_sessions',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.String(length=26), nullable=False),
    sa.Column('created_at', sa.String(length=32), nullable=False),
    sa.Column('expires_at', sa.String(length=32), nullable=False),
    sa.Column('revoked_at', sa.String(length=32), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['console_users.id'], name=op.f('fk_console_sessions_user_id_console_users')),
    sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_console_sessions'))
    )
    with op.batch_alter_table('console_sessions', schema=None) as batch_op:
        batch_op.create_index('ix_console_sessions_user', ['user_id', 'expires_at'], unique=False)
    # The console's queue order and its exact-id search.
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.create_index('ix_cases_queue_order', ['priority', 'resolution_due_at', 'id'], unique=False)
        batch_op.create_index('ix_cases_source_case_id', ['source_case_id'], unique=False)
        batch_op.create_index('ix_cases_order_id', ['order_id'], unique=False)
        batch_op.create_index('ix_cases_invoice_id', ['invoice_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_index('ix_cases_invoice_id')
        batch_op.drop_index('ix_cases_order_id')
        batch_op.drop_index('ix_cases_source_case_id')
        batch_op.drop_index('ix_cases_queue_order')
    with op.batch_alter_table('console_sessions', schema=None) as batch_op:
        batch_op.drop_index('ix_console_sessions_user')
    op.drop_table('console_sessions')
    op.drop_table('console_users')
