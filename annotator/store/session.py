"""Engine and session factory, with the schema check that keeps old databases from being misread."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, String, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from annotator.config import Settings
from annotator.errors import DatabaseOutOfDateError, ValueTooLongError

T = TypeVar("T")


def _migrations_dir() -> Path:
    """The alembic scripts: ``annotator.migrations`` (the repository's migrations/ folder, which the
    wheel installs inside the package and an editable install maps there)."""
    from annotator import migrations

    return Path(migrations.__file__).resolve().parent


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout (several processes share it)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def schema_revisions(engine: Engine) -> tuple[str | None, str]:
    """(current revision of the database, head revision of the code)."""
    head = ScriptDirectory.from_config(alembic_config(str(engine.url))).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return current, head


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database up to ``revision`` (``annotator db upgrade``)."""
    _migrate(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the database down to ``revision`` (``base`` drops every table)."""
    _migrate(engine, command.downgrade, revision)


def _migrate(engine: Engine, step, revision: str) -> None:
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        step(cfg, revision)


@dataclass
class Store:
    """An open database: the engine and a session factory."""

    engine: Engine
    sessionmaker: sessionmaker[Session]

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any error."""
        with self.sessionmaker.begin() as session:
            yield session

    def run(self, work: Callable[[Session], T], *, attempts: int = 5) -> T:
        """``work(session)`` in a transaction, run again from the start when a concurrent writer won a race.

        Two requests that both read "no such row" and both insert it (the first webhooks of a new
        project, two events for one task) leave the later one with a unique-constraint error; on
        SQLite, "database is locked" means another writer held the lock past the busy timeout (or a
        stale snapshot could not start writing), so a retry waits for it once more. A fresh attempt
        sees the winner's rows, so ``work`` must be an idempotent upsert.
        """
        for attempt in range(1, attempts + 1):
            try:
                with self.session() as session:
                    return work(session)
            except (IntegrityError, OperationalError) as exc:
                lost_race = isinstance(exc, IntegrityError) or "database is locked" in str(exc)
                if not lost_race or attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.engine.dispose()


def open_store(settings: Settings, *, check_schema: bool = True) -> Store:
    """Open the configured database.

    A brand-new, empty database is created at the head revision, so a first run just works.
    A database that has tables but is behind head is refused with `DatabaseOutOfDateError`,
    which names the command that fixes it; nothing is migrated behind the user's back.
    """
    engine = make_engine(settings.resolved_database_url)
    if check_schema:
        current, head = schema_revisions(engine)
        if current is None and not inspect(engine).get_table_names():
            upgrade(engine)
        elif current != head:
            engine.dispose()
            raise DatabaseOutOfDateError(
                engine.url.render_as_string(hide_password=True), current, head
            )
    factory = sessionmaker(engine, expire_on_commit=False)
    event.listen(factory, "before_flush", _check_string_lengths)
    event.listen(factory, "do_orm_execute", _check_bulk_lengths)
    return Store(engine=engine, sessionmaker=factory)


def _check_string_lengths(session: Session, _context, _instances) -> None:
    """Refuse a string longer than its column (`ValueTooLongError`, a 4xx) before it is written:
    Postgres would raise a driver error (a 500) and SQLite would store it, so both databases now
    answer alike, naming the column. This covers objects flushed; `_check_bulk_lengths` covers the
    repository's bulk inserts and updates."""
    for obj in (*session.new, *session.dirty):
        state = inspect(obj)  # its loaded values: reading an expired attribute would query mid-flush
        _check_row(state.mapper.local_table, state.dict)


def _check_bulk_lengths(state) -> None:
    """`_check_string_lengths` for ``session.execute(insert(Model), rows)`` and bulk updates."""
    if not (state.is_insert or state.is_update) or not state.parameters:
        return
    table = getattr(state.statement, "table", None)
    if table is None:
        return
    rows = state.parameters if isinstance(state.parameters, list) else [state.parameters]
    for row in rows:
        if isinstance(row, dict):
            _check_row(table, row)


def _check_row(table, row: dict) -> None:
    for column in table.columns:
        limit = column.type.length if isinstance(column.type, String) else None
        value = row.get(column.key)
        if limit is not None and isinstance(value, str) and len(value) > limit:
            raise ValueTooLongError(f"{table.name}.{column.key} is {len(value)} characters long, over its limit "
                                    f"of {limit}")
