"""The group-commit writer: every write on the sqlite3 driver goes through it.

Many concurrent LMTP sessions (and the delivery worker's outcomes) share one
commit, and one fsync, without giving up durability: nobody is told "done"
before the shared COMMIT returned. See :class:`Writer` for why its jobs run on
the event loop's thread and only BEGIN's wait, the batch work and COMMIT go to a
thread of its own.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .. import counters
from .engine import SET_BUSY_TIMEOUT, StoreError, connect_sync

log = logging.getLogger(__name__)

T = TypeVar("T")
SyncJob = Callable[[sqlite3.Connection], T]

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

    def runs(self, work: BatchWork) -> bool:
        """Whether this writer runs ``work`` before each COMMIT: jobs that note rows
        for it (:func:`lmtpd.store.outbound.enqueue_post`) need one that does."""
        return self.work is work

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
                started = time.monotonic()
                await loop.run_in_executor(self._executor, self._conn_execute, *self._finish)
                counters.COMMIT_SECONDS.observe(time.monotonic() - started)
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
            conn.execute(SET_BUSY_TIMEOUT)  # back to the usual wait

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
