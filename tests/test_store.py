"""The group-commit writer: batch work before COMMIT, jobs rolled back alone, the write lock."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3

import pytest

from lmtpd.config import Config
from lmtpd.ingest import IngestHandler
from lmtpd.runtime import open_runtime
from lmtpd.store import StoreError, Writer, connect_sync, members, writer
from lmtpd.store.outbound import FANOUT, enqueue_post

from .helpers.club import rows
from .helpers.timing import Clock


def new_post(db: sqlite3.Connection, list_name: str) -> tuple[int, int]:
    """A message and its post row for ``list_name``: (post id, list id)."""
    list_id = db.execute("SELECT id FROM lists WHERE name = ?", (list_name,)).fetchone()[0]
    msg_id = db.execute(
        "INSERT INTO messages (queue_id, mail_from, author, message_id, subject, size, raw, arrived_at) "
        "VALUES (?, 'anna@example.net', 'anna@example.net', '', '', 1, x'00', 0)",
        (f"Q{list_name}",),
    ).lastrowid
    post_id = db.execute(
        "INSERT INTO posts (message_id, list_id, list_name, sender, accepted_at, headers) VALUES (?, ?, ?, '', 0, '')",
        (msg_id, list_id, list_name),
    ).lastrowid
    assert post_id is not None
    return post_id, list_id


async def test_batch_work_queues_copies_of_committed_jobs_only(club_config: Config):
    fanout = Writer(club_config.database, work=FANOUT)
    await fanout.start()

    def good(db):
        post_id, list_id = new_post(db, "youth")
        enqueue_post(db, post_id, list_id, 100.0)
        return post_id

    def bad(db):
        post_id, list_id = new_post(db, "trainers")
        enqueue_post(db, post_id, list_id, 100.0)
        raise RuntimeError("after the copies were noted")

    try:
        results = await asyncio.gather(fanout.submit(good), fanout.submit(bad), return_exceptions=True)
    finally:
        await fanout.stop()
    assert fanout.batches == 1  # both jobs shared one transaction
    assert isinstance(results[1], RuntimeError)
    copies = rows(club_config, "SELECT post_id, recipient, state, next_attempt_at FROM deliveries ORDER BY id")
    assert [tuple(r) for r in copies] == [
        (results[0], "anna@example.net", "pending", 100.0),
        (results[0], "bob@example.net", "pending", 100.0),
        (results[0], "carla@example.com", "pending", 100.0),
    ]
    assert len(rows(club_config, "SELECT * FROM posts")) == 1


async def test_ingest_refuses_a_writer_without_the_fanout(club_config: Config):
    """A writer that would never write the copies: ingest says so when it is built."""
    reader = connect_sync(club_config.database)
    try:
        with pytest.raises(ValueError, match="FANOUT"):
            IngestHandler(club_config, Writer(club_config.database), reader, Clock())
    finally:
        reader.close()


async def test_noting_copies_outside_a_fanout_writer_fails_the_job(club_config: Config):
    """enqueue_post on any other connection: the job fails (and rolls back), nothing is lost silently."""
    plain = Writer(club_config.database)
    await plain.start()

    def job(db):
        post_id, list_id = new_post(db, "youth")
        enqueue_post(db, post_id, list_id, 100.0)

    try:
        with pytest.raises(sqlite3.OperationalError):
            await plain.submit(job)
    finally:
        await plain.stop()
    assert rows(club_config, "SELECT * FROM posts") == []


@pytest.mark.parametrize("retry_for", [writer.LOCK_RETRY_FOR, 0.0])
async def test_a_lock_held_by_another_process_is_waited_for(club_config: Config, monkeypatch, retry_for):
    """Held by another connection (say ``lmtpd queue hold``): the batch commits after it.

    With ``retry_for`` 0 the wait goes at once to the writer's thread.
    """
    monkeypatch.setattr(writer, "LOCK_RETRY_FOR", retry_for)
    other = sqlite3.connect(club_config.database, isolation_level=None)
    fanout = Writer(club_config.database, work=FANOUT)
    await fanout.start()
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE members SET name = 'Anna B.' WHERE address = 'anna@example.net'")
        read = "SELECT name FROM members WHERE address = 'anna@example.net'"
        job = asyncio.ensure_future(fanout.submit(lambda db: db.execute(read).fetchone()))
        await asyncio.sleep(0.2)
        assert not job.done()  # waiting for the lock; the loop runs meanwhile
        other.execute("COMMIT")
        assert (await asyncio.wait_for(job, 10))[0] == "Anna B."
    finally:
        other.close()
        await fanout.stop()


async def test_open_runtime_takes_everything_down_when_its_user_fails(club_config: Config):
    """The async context manager guarantees the cleanup the callers used to write by hand."""
    with pytest.raises(RuntimeError, match="boom"):
        async with open_runtime(club_config, deliver=True) as runtime:
            assert runtime.writer.runs(FANOUT) and runtime.worker is not None
            raise RuntimeError("boom")
    with pytest.raises(StoreError, match="not running"):
        await runtime.writer.submit(lambda db: None)
    with pytest.raises(sqlite3.ProgrammingError):
        runtime.reader.execute("SELECT 1")


async def test_rows_come_out_as_frozen_records(club_config: Config):
    reader = connect_sync(club_config.database)
    try:
        youth = members.find_list(reader, "Youth")
    finally:
        reader.close()
    assert youth is not None and youth.name == "youth" and youth["posters"] == "club"
    with pytest.raises(dataclasses.FrozenInstanceError):
        youth.name = "other"  # type: ignore[misc]


async def test_rebuilding_posts_in_a_migration_keeps_every_copy(tmp_path, monkeypatch):
    from lmtpd.store import engine

    db = await engine.connect(tmp_path / "old.sqlite3")
    known = engine.migrations()
    monkeypatch.setattr(engine, "migrations", lambda: known[:6])
    await engine.upgrade(db)
    forward = b"X-Lmtpd-Forwarded-For: <youth-owner@myclub.org>\r\nSubject: hi\r\n\r\nx\r\n"
    await db.execute(
        "INSERT INTO messages (queue_id, mail_from, author, size, raw, arrived_at) VALUES ('A', '', 'x', 1, ?, 0)",
        (forward,),
    )
    await db.execute(
        "INSERT INTO posts (message_id, list_name, sender, accepted_at, kind) VALUES (1, 'y', '', 0, 'report')"
    )
    await db.execute(
        "INSERT INTO deliveries (post_id, recipient, created_at, next_attempt_at) VALUES (1, 'a@b.c', 0, 0)"
    )
    monkeypatch.setattr(engine, "migrations", lambda: known)
    assert [m.version for m in await engine.upgrade(db)] == list(range(7, len(known) + 1))
    assert [tuple(r) for r in await engine.fetchall(db, "SELECT id, kind FROM posts")] == [(1, "forward")]
    assert [tuple(r) for r in await engine.fetchall(db, "SELECT post_id FROM deliveries")] == [(1,)]
    assert tuple(await engine.fetchone(db, "PRAGMA foreign_keys")) == (1,)
    await db.close()
