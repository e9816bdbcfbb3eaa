import pytest
import sqlalchemy as sa

from annotator.config import Settings
from annotator.errors import DatabaseOutOfDateError
from annotator.store import open_store
from annotator.store.session import downgrade, make_engine, schema_revisions, upgrade

TABLES = {"projects", "items", "labels", "predictions", "model_versions", "training_runs", "alembic_version"}


def _roundtrip(url: str) -> None:
    engine = make_engine(url)
    upgrade(engine)
    current, head = schema_revisions(engine)
    assert current == head is not None
    assert TABLES <= set(sa.inspect(engine).get_table_names())
    downgrade(engine, "base")
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()


def test_upgrade_from_empty_sqlite(tmp_path):
    _roundtrip(f"sqlite:///{tmp_path / 'x.db'}")


def test_sqlite_runs_in_wal_mode(store):
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


@pytest.mark.postgres
def test_upgrade_from_empty_postgres(pg_database):
    _roundtrip(pg_database)


def test_open_store_creates_empty_database_at_head(settings):
    store = open_store(settings)
    current, head = schema_revisions(store.engine)
    assert current == head
    store.close()


def test_open_store_refuses_database_behind_head(settings):
    engine = make_engine(settings.resolved_database_url)
    with engine.begin() as conn:  # an old database: tables exist, no revision stamp
        conn.exec_driver_sql("CREATE TABLE projects (id INTEGER PRIMARY KEY)")
    engine.dispose()
    with pytest.raises(DatabaseOutOfDateError, match="annotator db upgrade"):
        open_store(settings)
