"""Crash safety of the queue: kill -9 in the middle of a 2,000-copy flush, again and again.

After the restarts every copy has reached the far end at least once and the queue is
empty. Copies sent twice (the process died between the far end's 250 and our commit)
are counted and printed, never required to be zero.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import sqlite3
import time
from collections import Counter

from lmtpd import roster
from lmtpd.config import load
from lmtpd.runtime import open_runtime
from lmtpd.store import open_database, transaction

from .helpers.club import message, write_config
from .helpers.processes import spawn_lmtpd
from .helpers.sink import Sink
from .helpers.timing import Clock, eventually

MEMBERS = 200
POSTS = 10


async def test_kill_9_during_flush_loses_no_copy(tmp_path, sink: Sink):
    config = write_config(tmp_path, "127.0.0.1:8024", relay_port=sink.port, posts_per_day=100)
    cfg = load(config)
    db = await open_database(cfg.database)

    async def fill(db):
        await roster.add_list(db, "youth", 0)
        for i in range(MEMBERS):
            await roster.add_member(db, f"m{i:03d}@example.net", "", ["youth"], 0, cfg.domain)

    await transaction(db, fill)
    await db.close()
    async with open_runtime(cfg, Clock(time.time())) as runtime:
        handler = runtime.ingest()
        for i in range(POSTS):
            replies = await handler.decide(
                "m000@example.net", ["youth@myclub.org"], message(author="m000@example.net", subject=f"post {i}")
            )
            assert replies[0].startswith("250")
    total = MEMBERS * POSTS

    rng = random.Random()
    kills = 0
    for _ in range(4):
        target = len(sink.received) + rng.randint(50, 400)
        proc = await spawn_lmtpd(config, "queue", "flush", stdout=asyncio.subprocess.DEVNULL)
        try:
            await eventually(lambda t=target, p=proc: len(sink.received) >= t or p.returncode is not None, 60)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            await proc.wait()
    proc = await spawn_lmtpd(config, "queue", "flush", stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, out

    seen = Counter()
    for r in sink.received:
        subject = re.search(rb"^Subject: (.*?)\r?$", r.data, re.M).group(1)
        seen[(subject, r.rcpt)] += 1
    assert len(seen) == total  # every copy arrived
    duplicates = sum(n - 1 for n in seen.values())
    db = sqlite3.connect(cfg.database)
    states = dict(db.execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall())
    leased = db.execute("SELECT count(*) FROM deliveries WHERE lease_owner IS NOT NULL").fetchone()[0]
    db.close()
    assert states == {"sent": total} and leased == 0
    print(f"{kills} kills during a {total}-copy flush: {len(sink.received)} received, {duplicates} duplicates")
