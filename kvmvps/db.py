"""Database engine, sessions and migrations."""

from __future__ import annotations

import ast
import fcntl
import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    create_engine,
    event,
    inspect,
    make_url,
    text,
)
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from kvmvps.config import Settings

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, see _sqlite_begin
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    """Take the write lock up front, so concurrent writers queue instead of deadlocking."""
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_read_pragmas(dbapi_conn: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA query_only=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_read_engine(url: str) -> Engine:
    """SQLite readers: a plain snapshot (WAL lets them run beside the one writer)."""
    engine = create_engine(url, connect_args={"timeout": 30})
    event.listen(engine, "connect", _sqlite_read_pragmas)
    event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
    return engine


POOL_SIZE = 5  # SQLAlchemy's default; a worker adds two connections per job thread


def make_engine(url: str, pool_size: int = POOL_SIZE, **options: Any) -> Engine:
    """An engine for ``url``; SQLite gets foreign keys, WAL and a busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, pool_size=pool_size)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size, **options)


class Database:
    """One engine and its session factory."""

    def __init__(self, url: str, pool_size: int = POOL_SIZE) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        sqlite = url.startswith("sqlite")
        # single statements in autocommit get connections of their own: no
        # isolation level to switch and switch back at each checkout
        self._autocommit = None if sqlite else make_engine(url, 2, isolation_level="AUTOCOMMIT")
        self._read_engine = make_read_engine(url) if sqlite else self.engine
        self._readers = sessionmaker(self._read_engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """Enough pooled connections for a worker's job threads and their lease keepers."""
        return cls(settings.effective_database_url, POOL_SIZE + 2 * settings.worker_concurrency)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A plain connection in a transaction (commit on success), for hot Core statements."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def statement(self) -> Iterator[Connection]:
        """A connection for one statement that is its own transaction.

        On PostgreSQL it runs in autocommit: no ``BEGIN`` and ``COMMIT`` round
        trips. Elsewhere (SQLite's writes begin with ``BEGIN IMMEDIATE``) it is
        an ordinary transaction.
        """
        if self._autocommit is None:
            with self.transaction() as conn:
                yield conn
            return
        with self._autocommit.connect() as conn:
            yield conn

    @property
    def autocommits(self) -> bool:
        """Whether :meth:`statement` runs in autocommit (PostgreSQL), not in a transaction."""
        return self._autocommit is not None

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only session: on SQLite it does not take the write lock."""
        with self._readers() as session, session.begin():
            yield session

    @contextmanager
    def write_turn(self, lock_path: Path) -> Iterator[None]:
        """Take turns for writing, on SQLite: waiters wake the moment the writer is done.

        SQLite lets one writer in at a time and makes the others poll with
        growing sleeps (up to 100 ms each); under a burst of writes that
        sleeping, not the work, is most of the wait. An exclusive ``flock`` on
        ``lock_path`` queues the writers that use it (threads and processes
        alike) in the kernel instead. Elsewhere it does nothing.
        """
        if not self.url.startswith("sqlite"):
            yield
            return
        with open(lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def migrate(self) -> None:
        """Bring the schema up to the newest Alembic revision (a new SQLite file is 0600)."""
        path = sqlite_file(self.url)
        if path is not None:
            create_private(path)
        # Alembic (about a third of the CLI's start-up) is imported only here, where
        # the schema is changed: read-only commands never load it (speed, not cycles).
        from alembic import command

        with self.engine.begin() as conn:
            cfg = alembic_config(self.url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def dispose(self) -> None:
        self.engine.dispose()
        self._read_engine.dispose()
        if self._autocommit is not None:
            self._autocommit.dispose()


def rowcount(result: object) -> int:
    """How many rows an UPDATE or DELETE run with ``Session.execute`` touched.

    ``Session.execute`` is typed to return a plain ``Result``; for DML it is a
    ``CursorResult``, which alone knows its row count.
    """
    if not isinstance(result, CursorResult):
        raise TypeError(f"a {type(result).__name__} has no row count")
    return result.rowcount


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (wherever it is); None for other databases or memory."""
    parsed = make_url(url)
    name = parsed.database or ""
    if (
        parsed.get_backend_name() != "sqlite"
        or name in ("", ":memory:")
        or name.startswith("file:")
    ):
        return None
    return Path(name)


def create_private(path: Path) -> None:
    """Make ``path`` (and its directory) if missing, readable by its owner only.

    SQLite gives its -wal and -shm files the mode of the database file, so
    they are private too. An existing file loses any group and other bits.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for each in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            if each.exists():
                os.chmod(each, stat.S_IMODE(each.stat().st_mode) & 0o700)
        return
    os.close(fd)


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at the packaged migrations."""
    from alembic.config import Config  # lazy for speed: see Database.migrate

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def schema_is_current(db: Database) -> bool:
    """True when the database exists and carries the newest migration."""
    if db.url.startswith("sqlite:///") and not Path(db.url.removeprefix("sqlite:///")).exists():
        return False
    with db.engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return False
        current = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return set(current) == migration_heads()


def migration_heads() -> set[str]:
    """The newest revisions of the packaged migrations, read without Alembic.

    Each file names its ``revision`` and ``down_revision`` (a name, a tuple
    of names for a merge, or None); a head is a revision nobody revises.
    Importing Alembic's script machinery for this costs every CLI command
    more than the command itself; tests/unit/test_migrations.py checks this
    against Alembic's own answer.
    """
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        for name, value in _assignments(ast.parse(path.read_text())):
            if name == "revision" and isinstance(value, str):
                revisions.add(value)
            elif name == "down_revision" and isinstance(value, str):
                revised.add(value)
            elif name == "down_revision" and isinstance(value, tuple):
                revised.update(str(v) for v in value)  # a merge revises several
    return revisions - revised


def _assignments(module: ast.Module) -> Iterator[tuple[str, object]]:
    """``name = literal`` (annotated or not) at a module's top level."""
    for node in module.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            yield node.target.id, _literal(node.value)
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            yield node.targets[0].id, _literal(node.value)


def _literal(node: ast.expr) -> object:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None  # not a literal: not a revision name
