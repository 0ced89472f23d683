"""Exactly once per occurrence: ``serve`` killed with SIGKILL around due times, 20 times, restarted.

Twenty reminders fall due 1.5 s apart; before each one's due time a ``serve`` is
started and killed at a random moment close to it (while starting, while
posting, while sending), and the next one started at once. At the end every
occurrence is recorded once and posted once: each member holds exactly one post of
each (one Message-ID), at least one copy of it. Copies sent twice (killed between
the far end's 250 and the commit of the outcome) are allowed and printed.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from datetime import UTC, datetime
from email import message_from_bytes

from lmtpd import reminder_admin
from lmtpd.reminder_admin import Schedule
from lmtpd.store import open_database, transaction

from .helpers.club import new_club, rows
from .helpers.processes import alive, children, serving, spawn_lmtpd
from .helpers.sink import Sink
from .helpers.timing import eventually

ROUNDS = 20
SPACING = 1.5  # seconds between due times
YOUTH = {"anna@example.net", "bob@example.net", "carla@example.com"}


async def test_kill_9_around_due_times_posts_every_occurrence_once(short_dir, sink: Sink):
    cfg = await new_club(short_dir, relay_port=sink.port)
    rng = random.Random()
    t0 = time.time() + 2
    db = await open_database(cfg.database)
    try:
        for i in range(ROUNDS):
            at = datetime.fromtimestamp(t0 + i * SPACING, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
            when = Schedule("at", at, "UTC")
            await transaction(db, lambda db, w=when, i=i: reminder_admin.add(db, "youth", f"tick {i}", "x\n", w, 0))
    finally:
        await db.close()
    orphans: list[int] = []
    kills = Counter[str]()
    for i in range(ROUNDS):
        proc = await spawn_lmtpd(cfg.source, "serve", stderr=asyncio.subprocess.DEVNULL)
        kill_at = t0 + i * SPACING + rng.uniform(-0.7, 0.7)
        await asyncio.sleep(max(0.0, kill_at - time.time()))
        posted = rows(cfg, "SELECT count(*) FROM reminder_occurrences")[0][0]
        kills["after its post" if posted > i else "before its post"] += 1
        if proc.returncode is None:
            orphans += children(proc.pid)  # the delivery worker ends by itself: its pipe closes
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
    async with serving(cfg.source):
        await eventually(lambda: len({(r.rcpt, r.data) for r in sink.received}) >= ROUNDS * len(YOUTH), 60, "copies")
    await eventually(lambda: not any(alive(p) for p in orphans), 30, "the killed serves' workers to end")

    assert [tuple(r) for r in rows(cfg, "SELECT reminder_id, count(*) FROM reminder_occurrences GROUP BY 1")] == [
        (i + 1, 1) for i in range(ROUNDS)
    ]
    assert rows(cfg, "SELECT count(*) FROM posts")[0][0] == ROUNDS
    posts = Counter[tuple[str, str]]()
    copies = Counter[tuple[str, str]]()
    for received in {(r.rcpt, r.data) for r in sink.received}:
        msg = message_from_bytes(received[1])
        posts[(received[0], msg["Subject"])] += 1  # one Message-ID per post: distinct bytes per post
    for r in sink.received:
        copies[(r.rcpt, message_from_bytes(r.data)["Subject"])] += 1
    expected = {(m, f"[youth] tick {i}") for m in YOUTH for i in range(ROUNDS)}
    assert set(posts) == expected and set(posts.values()) == {1}
    print(f"\nkills: {dict(kills)}; copies sent twice: {sum(n - 1 for n in copies.values())}")
