"""The Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL.

Several changes add columns and tables at once; a model changed without its
migration (or a migration chain with two heads) would only show on an
upgraded installation. This compares the migrated database with the models.
"""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from kvmvps.db import alembic_config, migration_heads, schema_is_current
from kvmvps.models import Base
from kvmvps.services import Context

# the other unit tests start from a copy of a migrated template; these migrate an empty database
pytestmark = pytest.mark.empty_database


def test_migrated_schema_matches_the_models(td_ctx: Context) -> None:
    with td_ctx.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"


def test_one_linear_migration_chain(td_ctx: Context) -> None:
    script = ScriptDirectory.from_config(alembic_config(td_ctx.db.url))
    heads = script.get_heads()
    assert len(heads) == 1, f"the migrations have {len(heads)} heads: {heads}"
    with td_ctx.db.engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    assert current == heads[0]


def test_cheap_head_check_agrees_with_alembic(td_ctx: Context) -> None:
    """The CLI's version check (no Alembic import) names Alembic's heads and sees an old schema."""
    script = ScriptDirectory.from_config(alembic_config(td_ctx.db.url))
    heads = script.get_heads()
    assert migration_heads() == set(heads)
    assert schema_is_current(td_ctx.db)
    with td_ctx.db.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0004_netiso'")
    try:
        assert not schema_is_current(td_ctx.db)
    finally:
        with td_ctx.db.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": heads[0]})
