"""Named, non-blocking locks that hold across processes and, on Postgres, across hosts.

One trainer per project in a whole deployment: on Postgres a session-level advisory lock (held by
one pooled connection for as long as the lock is held, released by the server if that process
dies); on SQLite, where every process shares one database file on one machine, a `filelock` file
beside it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import Engine


def _key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name`` (Python's hash() differs per process)."""
    return int.from_bytes(hashlib.blake2b(f"annotator:{name}".encode(), digest_size=8).digest(), "big", signed=True)


@contextmanager
def try_lock(engine: Engine, name: str) -> Iterator[bool]:
    """Try once to take the lock ``name``; yields whether it was taken (and holds it until the block ends)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            key = _key(name)
            taken = bool(conn.execute(select(func.pg_try_advisory_lock(key))).scalar())
            conn.commit()
            try:
                yield taken
            finally:
                if taken:
                    conn.execute(select(func.pg_advisory_unlock(key)))
                    conn.commit()
        return
    yield from _file_lock(_lock_path(engine, name))


def _lock_path(engine: Engine, name: str) -> Path:
    database = engine.url.database
    folder = Path(database).parent if database and database != ":memory:" else Path.cwd()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return folder / "locks" / f"{safe}.lock"


def _file_lock(path: Path) -> Iterator[bool]:
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, preserve_lock_file=True)  # unlinking a lock file on release races with its next user
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
