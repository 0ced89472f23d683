"""The SQLite engine: connections, their PRAGMAs, migrations, the transaction helpers.

Every connection lmtpd opens comes from here, with the same settings: WAL mode
and ``synchronous=FULL``, so a commit that returned is on disk. Two drivers, on
purpose (see the package docstring): :func:`connect` (aiosqlite) for the
operator's verbs, :func:`connect_sync` (sqlite3) for the group-commit
:class:`~lmtpd.store.writer.Writer` and the readers on the event loop.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

log = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[aiosqlite.Connection], Awaitable[T]]

BUSY_TIMEOUT_MS = 15000  # how long a connection waits for another process's write lock
SET_BUSY_TIMEOUT = f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}"
PRAGMAS = (
    SET_BUSY_TIMEOUT,
    "PRAGMA auto_vacuum = INCREMENTAL",  # takes effect in a new file only: pruning gives pages back
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",  # in WAL mode, FULL is what makes a commit durable
    "PRAGMA foreign_keys = ON",
)


class StoreError(Exception):
    """The database cannot be used (cannot open, migration failed...)."""


class SchemaError(StoreError):
    """The database's schema version is not the one this code speaks."""


# ------------------------------------------------------------------ connections


async def connect(path: Path) -> aiosqlite.Connection:
    """Open ``path`` with the settings every lmtpd connection relies on.

    aiosqlite runs each connection in a thread the interpreter waits for at exit:
    a connection that fails half-way is closed here, or the process never ends.
    """
    db = await aiosqlite.connect(str(path), isolation_level=None)
    try:
        db.row_factory = sqlite3.Row
        for pragma in PRAGMAS:
            await db.execute(pragma)
    except BaseException:
        await db.close()
        raise
    return db


def connect_sync(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection with the same settings: the writer's, and the readers on the loop."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        for pragma in PRAGMAS:
            conn.execute(pragma)
    except BaseException:
        conn.close()
        raise
    return conn


async def fetchall(db: aiosqlite.Connection, sql: str, params: Any = ()) -> list[sqlite3.Row]:
    async with db.execute(sql, params) as cur:
        return list(await cur.fetchall())


async def fetchone(db: aiosqlite.Connection, sql: str, params: Any = ()) -> sqlite3.Row | None:
    async with db.execute(sql, params) as cur:
        return await cur.fetchone()


# ----------------------------------------------------------------- transactions


async def transaction(db: aiosqlite.Connection, job: Job[T]) -> T:
    """Run ``job`` inside BEGIN IMMEDIATE ... COMMIT on a connection of one's own.

    The only way to write through aiosqlite. Writes on sqlite3 go through the
    :class:`~lmtpd.store.writer.Writer`, whose jobs already run in a transaction.
    """
    await db.execute("BEGIN IMMEDIATE")
    try:
        result = await job(db)
    except BaseException:
        await db.rollback()
        raise
    await db.commit()
    return result


@contextmanager
def savepoint(db: sqlite3.Connection, name: str = "part") -> Iterator[None]:
    """Part of a Writer job that is undone alone when it raises (the exception goes on)."""
    db.execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        db.execute(f"ROLLBACK TO {name}")
        db.execute(f"RELEASE {name}")
        raise
    db.execute(f"RELEASE {name}")


# ------------------------------------------------------------------- migrations


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


_MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def migrations() -> list[Migration]:
    """The SQL files shipped with this version, in order."""
    try:
        folder: Any = resources.files("lmtpd.migrations")
    except ModuleNotFoundError:  # running from a source tree that is not installed
        folder = Path(__file__).resolve().parents[2] / "migrations"
    found = []
    for entry in folder.iterdir():
        m = _MIGRATION_RE.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda mig: mig.version)
    for expected, mig in enumerate(found, start=1):
        if mig.version != expected:
            raise StoreError(f"migration {expected:04d} is missing")
    return found


async def schema_version(db: aiosqlite.Connection) -> int:
    row = await fetchone(db, "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_migrations'")
    if row is None:
        return 0
    row = await fetchone(db, "SELECT coalesce(max(version), 0) FROM schema_migrations")
    return int(row[0]) if row else 0


async def upgrade(db: aiosqlite.Connection, now: float | None = None) -> list[Migration]:
    """Apply every migration newer than the database, each in its own transaction."""
    known = migrations()
    current = await schema_version(db)
    if current > len(known):
        raise _too_new(current, len(known))
    applied = []
    for mig in known[current:]:
        stamp = time.time() if now is None else now
        script = (
            "BEGIN IMMEDIATE;\n"
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL);\n"
            f"{mig.sql}\n;\n"
            f"INSERT INTO schema_migrations VALUES ({mig.version}, '{mig.name}', {stamp});\n"
        )
        # Foreign keys off around the migration (a no-op inside a transaction, so
        # before BEGIN): rebuilding a table drops the old one, and with them on that
        # would cascade-delete every row referring to it. Checked before COMMIT instead.
        await db.execute("PRAGMA foreign_keys = OFF")
        try:
            await db.executescript(script)
            broken = await fetchall(db, "PRAGMA foreign_key_check")
            if broken:
                raise sqlite3.IntegrityError(f"{len(broken)} rows break foreign keys, e.g. in {broken[0][0]}")
            await db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                await db.rollback()
            raise StoreError(f"migration {mig.version:04d}_{mig.name} failed: {exc}") from None
        finally:
            await db.execute("PRAGMA foreign_keys = ON")
        log.info("applied migration %04d_%s", mig.version, mig.name)
        applied.append(mig)
    return applied


def _too_new(current: int, known: int) -> SchemaError:
    return SchemaError(f"database schema version {current} is newer than this lmtpd knows ({known}); upgrade lmtpd")


async def check_schema(db: aiosqlite.Connection, allow_upgrade: bool) -> None:
    """Refuse a database newer than this code; upgrade an older one only if allowed.

    A brand-new, empty database is always set up: there is nothing to protect.
    """
    known = len(migrations())
    current = await schema_version(db)
    if current == known:
        return
    if current > known:
        raise _too_new(current, known)
    empty = await fetchone(db, "SELECT 1 FROM sqlite_master WHERE type='table' LIMIT 1") is None
    if not empty and not allow_upgrade:
        raise SchemaError(
            f"database schema version {current} is older than {known}: run 'lmtpd db upgrade' (or 'serve --upgrade')"
        )
    await upgrade(db)


# ---------------------------------------------------------------------- opening


def check_path(path: Path) -> None:
    """Refuse, with a reason, a path SQLite would fail on obscurely or create by mistake.

    A typo in the directory is an error, not a new empty database somewhere else;
    /proc and /sys files cannot hold a database (SQLite may even wait on them).
    """
    try:
        resolved = path.resolve()
        if resolved.parts[1:2] in (("proc",), ("sys",)):
            raise StoreError(f"cannot open database {path}: a kernel file system cannot hold a database")
        if not resolved.parent.is_dir():
            raise StoreError(f"cannot open database {path}: directory {path.parent} does not exist")
        if resolved.is_dir():
            raise StoreError(f"cannot open database {path}: is a directory")
        if resolved.exists() and not os.access(resolved, os.R_OK | os.W_OK):
            raise StoreError(f"cannot open database {path}: permission denied for user {_user()}")
    except OSError as exc:
        raise StoreError(f"cannot open database {path}: {exc.strerror or exc}") from None


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


async def open_database(path: Path, allow_upgrade: bool = False, check: bool = True) -> aiosqlite.Connection:
    """Connect and (unless ``check`` is off) make sure the schema is the one this code speaks."""
    check_path(path)
    try:
        # Try it plainly first: when aiosqlite's own connect fails, its thread may
        # outlive the event loop and die with a traceback at exit.
        connect_sync(path).close()
        db = await connect(path)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from None
    try:
        if check:
            await check_schema(db, allow_upgrade)
    except BaseException:
        await db.close()
        raise
    return db
