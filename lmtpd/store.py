"""SQLite: connections, the migrations runner, group commit, membership queries.

The database is the single source of truth. Connections run in WAL mode with
``synchronous=FULL``, so a commit that returned is on disk; the :class:`Writer`
lets many concurrent LMTP sessions share one commit (and one fsync) without
giving up that promise: nobody is told "done" before the shared COMMIT returned.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

log = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[aiosqlite.Connection], Awaitable[T]]
SyncJob = Callable[[sqlite3.Connection], T]

PRAGMAS = (
    "PRAGMA busy_timeout = 15000",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",  # in WAL mode, FULL is what makes a commit durable
    "PRAGMA foreign_keys = ON",
)


class StoreError(Exception):
    """The database cannot be used (cannot open, migration failed...)."""


class SchemaError(StoreError):
    """The database's schema version is not the one this code speaks."""


# ---------------------------------------------------------------- connections


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


async def fetchall(db: aiosqlite.Connection, sql: str, params: Any = ()) -> list[sqlite3.Row]:
    async with db.execute(sql, params) as cur:
        return list(await cur.fetchall())


async def fetchone(db: aiosqlite.Connection, sql: str, params: Any = ()) -> sqlite3.Row | None:
    async with db.execute(sql, params) as cur:
        return await cur.fetchone()


async def transaction(db: aiosqlite.Connection, job: Job[T]) -> T:
    """Run ``job`` inside BEGIN IMMEDIATE ... COMMIT on a connection of one's own."""
    await db.execute("BEGIN IMMEDIATE")
    try:
        result = await job(db)
    except BaseException:
        await db.rollback()
        raise
    await db.commit()
    return result


# ----------------------------------------------------------------- migrations


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
        folder = Path(__file__).resolve().parent.parent / "migrations"
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
            "COMMIT;"
        )
        try:
            await db.executescript(script)
        except sqlite3.Error as exc:
            if db.in_transaction:
                await db.rollback()
            raise StoreError(f"migration {mig.version:04d}_{mig.name} failed: {exc}") from None
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


# --------------------------------------------------------------- group commit


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


LOCK_RETRY = 0.0005  # seconds between tries for a write lock another process holds
LOCK_RETRY_FOR = 1.0  # then wait for it in the writer's thread


@dataclass
class _Pending:
    job: SyncJob[Any]
    future: asyncio.Future[Any]


@dataclass(frozen=True)
class BatchWork:
    """Set-based statements run once per batch, in the writer's thread, before COMMIT.

    Jobs note what they want done in a TEMP table (``setup`` creates it on the
    writer's connection); ``statements`` then do it for the whole batch at once.
    SQLite releases the GIL while a statement runs, so work on many rows done here
    (say, fifty queued copies per post) does not hold up the event loop. It stays
    inside the batch's transaction: a job rolled back takes its notes with it,
    and nothing is acknowledged before the COMMIT that includes the work.
    """

    setup: tuple[str, ...]
    statements: tuple[str, ...]


class Writer:
    """Serialises writes on one connection and commits them in shared batches.

    Jobs are plain functions of a sqlite3 connection. They run on the event loop's
    thread, each in its own SAVEPOINT inside one transaction per batch: SQLite
    statements on a few rows take microseconds, and running them here avoids a
    thread hop (and a wait for the GIL) per statement. The batch's
    :class:`BatchWork` and the COMMIT, whose fsync may take long on a slow disk,
    go to the writer's own thread in one hop. A job that raises is rolled back
    alone; the others still commit. Results are handed out only after COMMIT
    returned, so an acknowledgement is always durable.
    """

    def __init__(self, path: Path, max_batch: int = 256, work: BatchWork | None = None):
        self.path = path
        self.max_batch = max_batch
        self.work = work
        self._finish = (*(work.statements if work else ()), "COMMIT")
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self.batches = 0
        self.jobs = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmtpd-writer")
        try:
            self._conn = await loop.run_in_executor(self._executor, connect_sync, self.path)
            for sql in self.work.setup if self.work else ():
                self._conn.execute(sql)
        except sqlite3.Error as exc:
            self._executor.shutdown()
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        self._task = loop.create_task(self._run(), name="lmtpd-writer")

    async def stop(self) -> None:
        """Commit what was submitted, then stop and close the connection."""
        if self._task is None:
            return
        self._queue.put_nowait(None)
        await self._task
        self._task = None
        assert self._executor is not None and self._conn is not None
        await asyncio.get_running_loop().run_in_executor(self._executor, self._conn.close)
        self._executor.shutdown()

    async def submit(self, job: SyncJob[T]) -> T:
        """Run ``job`` in the next batch; return its result once committed.

        The wait is shielded: a caller that goes away (connection lost) does not
        cancel a job that may already be part of a committing batch.
        """
        if self._task is None:
            raise StoreError("database writer is not running")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(job, fut))
        return await asyncio.shield(fut)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            batch: list[_Pending] = []
            item = await self._queue.get()
            while True:
                if item is None:
                    stopping = True
                else:
                    batch.append(item)
                if stopping or len(batch) >= self.max_batch or self._queue.empty():
                    break
                item = self._queue.get_nowait()
            if not batch:
                continue
            try:
                await self._begin(loop)
                outcomes = self._run_jobs([p.job for p in batch])
                await loop.run_in_executor(self._executor, self._conn_execute, *self._finish)
            except Exception as exc:
                log.error("commit of %d jobs failed: %s", len(batch), exc)
                self._rollback()
                outcomes = [(None, exc)] * len(batch)
            self.batches += 1
            self.jobs += len(batch)
            for pending, (value, error) in zip(batch, outcomes, strict=True):
                if pending.future.done():
                    continue
                if error is None:
                    pending.future.set_result(value)
                else:
                    pending.future.set_exception(error)

    async def _begin(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take the write lock: at once if it is free, else keep trying from the loop.

        Another process (the delivery worker, a CLI command) holds it for a commit
        of a millisecond or so. SQLite's own busy handler would sleep in steps of
        up to 100 ms while every session of this batch waits; trying again every
        LOCK_RETRY seconds on the loop costs little and leaves the loop free. A
        lock held longer than LOCK_RETRY_FOR is waited for in the writer's thread.
        """
        deadline = time.monotonic() + LOCK_RETRY_FOR
        while not self._try_begin():
            if time.monotonic() >= deadline:
                await loop.run_in_executor(self._executor, self._conn_execute, "BEGIN IMMEDIATE")
                return
            await asyncio.sleep(LOCK_RETRY)

    def _try_begin(self) -> bool:
        conn = self._conn
        assert conn is not None
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            conn.execute("BEGIN IMMEDIATE")
            return True
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise
            return False
        finally:
            conn.execute(PRAGMAS[0])

    def _run_jobs(self, jobs: list[SyncJob[Any]]) -> list[tuple[Any, BaseException | None]]:
        """Inside the batch's transaction, run every job in a savepoint of its own."""
        conn = self._conn
        assert conn is not None
        outcomes: list[tuple[Any, BaseException | None]] = []
        for job in jobs:
            conn.execute("SAVEPOINT job")
            try:
                value = job(conn)
            except Exception as exc:  # one bad job must not sink the batch
                conn.execute("ROLLBACK TO job")
                outcomes.append((None, exc))
            else:
                outcomes.append((value, None))
            conn.execute("RELEASE job")
        return outcomes

    def _conn_execute(self, *statements: str) -> None:
        """In the writer's thread: BEGIN (may wait for the lock), batch work and COMMIT (fsync)."""
        assert self._conn is not None
        for sql in statements:
            self._conn.execute(sql)

    def _rollback(self) -> None:
        try:
            if self._conn is not None and self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("rollback failed")


# ---------------------------------------------------------- members and lists


def normalize_address(address: str) -> str:
    """``Local@Example.ORG`` -> ``Local@example.org``: domains are case-insensitive."""
    local, at, domain = address.strip().rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"not an email address: {address!r}")
    return f"{local}@{domain.lower()}"


FIND_LIST = "SELECT * FROM lists WHERE name = ?"
FIND_MEMBER = "SELECT * FROM members WHERE address = ?"


def in_list(db: sqlite3.Connection, list_id: int, member_id: int) -> bool:
    row = db.execute("SELECT 1 FROM memberships WHERE list_id = ? AND member_id = ?", (list_id, member_id))
    return row.fetchone() is not None


def posts_today(db: sqlite3.Connection, member_id: int, list_id: int, day: str) -> int:
    row = db.execute(
        "SELECT posts FROM quota_use WHERE member_id = ? AND list_id = ? AND day = ?", (member_id, list_id, day)
    ).fetchone()
    return row[0] if row else 0


async def find_list(db: aiosqlite.Connection, name: str) -> sqlite3.Row | None:
    return await fetchone(db, FIND_LIST, (name.lower(),))


async def find_member(db: aiosqlite.Connection, address: str) -> sqlite3.Row | None:
    return await fetchone(db, FIND_MEMBER, (address,))
