"""Retention (lmtpd.retention): what is done with goes, what is still needed never does.

Copies are sent, deferred and failed by the real worker against the sink; time moves
on the injected clock; pruning runs through the group-commit writer, as in serve.
"""

from __future__ import annotations

import dataclasses
import random
import sqlite3

from lmtpd import retention
from lmtpd.config import Config, RetentionConfig
from lmtpd.runtime import open_runtime
from lmtpd.store import retention as store

from .helpers import lmtpclient
from .helpers.club import lmtp_target, message, rows, running
from .helpers.sink import Sink
from .helpers.timing import Clock, eventually

DAY = 86400.0


def counts(cfg: Config) -> dict[str, int]:
    return {t: rows(cfg, f"SELECT count(*) FROM {t}")[0][0] for t in ("messages", "posts", "deliveries", "bounces")}


def test_cutoffs_are_days_before_now_and_zero_keeps_forever():
    cut = retention.cutoffs(RetentionConfig(copies_days=30, posts_days=0, bounces_days=1), 100 * DAY)
    assert cut == retention.Cutoffs(copies=70 * DAY, posts=None, bounces=99 * DAY)


async def test_nothing_still_needed_is_pruned(club_config: Config, sink: Sink, clock: Clock):
    """Sent copies and old posts go; pending, held and unreported failed copies, their posts,
    and the bounces behind a member's current score stay, however old."""
    cfg = club_config
    async with open_runtime(cfg, clock, deliver=True, rng=random.Random(3)) as runtime:
        ingest = runtime.ingest()
        assert runtime.worker is not None
        sent = await ingest.decide("anna@example.net", ["youth@myclub.org"], message(subject="all sent"))
        await runtime.worker.deliver_due()
        sink.rcpt_replies = {"bob@example.net": "550 5.1.1 no such user"}
        failed = await ingest.decide("anna@example.net", ["youth@myclub.org"], message(subject="one failed"))
        await runtime.worker.deliver_due()  # bob fails: the report to the admin is queued, then sent
        await runtime.worker.deliver_due()
        sink.rcpt_replies = {"carla@example.com": "451 4.2.0 later"}
        pending = await ingest.decide("anna@example.net", ["youth@myclub.org"], message(subject="one deferred"))
        await runtime.worker.deliver_due()
        held = await ingest.decide("anna@example.net", ["youth@myclub.org"], message(subject="held"))
        assert all(r[0].startswith("250") for r in (sent, failed, pending, held))
        held_id = held[0].split()[3]
        db = sqlite3.connect(cfg.database)
        with db:
            db.execute(
                "UPDATE deliveries SET state = 'held' WHERE post_id IN "
                "(SELECT p.id FROM posts p JOIN messages m ON m.id = p.message_id WHERE m.queue_id = ?)",
                (held_id,),
            )
            # a failed copy whose report was never queued (say, a crash before the report)
            unreported = db.execute(
                "INSERT INTO posts (message_id, list_name, sender, accepted_at, headers) "
                "SELECT message_id, list_name, sender, accepted_at, headers FROM posts WHERE id = 1 RETURNING id"
            ).fetchone()[0]
            db.execute(
                "INSERT INTO deliveries (post_id, recipient, state, created_at, next_attempt_at) "
                "VALUES (?, 'dave@example.com', 'failed', ?, ?)",
                (unreported, clock.now, clock.now),
            )
            bob = db.execute("SELECT id FROM members WHERE address = 'bob@example.net'").fetchone()[0]
            db.execute("UPDATE members SET bounce_score = 2 WHERE id = ?", (bob,))
            for member, counted, processed in ((bob, 1, clock.now), (None, 0, clock.now), (None, 0, None)):
                db.execute(
                    "INSERT INTO bounces (queue_id, list_name, recipient, mail_from, size, raw, arrived_at,"
                    " processed_at, member_id, counted, kind) VALUES ('B', 'youth', 'youth-bounces@myclub.org',"
                    " '', 1, x'00', ?, ?, ?, ?, 'permanent')",
                    (clock.now, processed, member, counted),
                )
        db.close()
        before = counts(cfg)
        assert before == {"messages": 5, "posts": 6, "deliveries": 14, "bounces": 3}

        clock.advance(29 * DAY)
        assert (await retention.prune(runtime.writer, cfg.retention, clock)).total == 0

        clock.advance(2 * DAY)  # copies are 31 days old: the sent ones, and failed ones reported, go
        assert retention.count(runtime.reader, cfg.retention, clock()) == retention.Pruned(copies=9)
        pruned = await retention.prune(runtime.writer, cfg.retention, clock)
        assert pruned == retention.Pruned(copies=9)
        left = {(r["recipient"], r["state"]) for r in rows(cfg, "SELECT recipient, state FROM deliveries")}
        assert left == {
            ("carla@example.com", "pending"),  # deferred: still to be sent
            ("anna@example.net", "held"),
            ("bob@example.net", "held"),
            ("carla@example.com", "held"),
            ("dave@example.com", "failed"),  # its report was never queued
        }

        clock.advance(400 * DAY)  # past every limit
        pruned = await retention.prune(runtime.writer, cfg.retention, clock)
        assert pruned.posts == 3 and pruned.bounces == 1  # all sent, one failed, the report
        subjects = {r[0] for r in rows(cfg, "SELECT subject FROM messages")}
        assert subjects == {"one deferred", "held", "all sent"}  # "all sent" is named by the unreported post
        kept = rows(cfg, "SELECT member_id, processed_at FROM bounces ORDER BY id")
        assert [(r[0], r[1] is not None) for r in kept] == [(bob, True), (None, False)]
        assert rows(cfg, "PRAGMA foreign_key_check") == []


async def test_serve_prunes_on_its_own_and_the_file_stops_growing(club_config: Config, sink: Sink, clock: Clock):
    """serve's pass runs every ``interval``; pruned pages go back (incremental auto_vacuum)."""
    cfg = dataclasses.replace(club_config, retention=RetentionConfig(copies_days=1, posts_days=1, interval=1))
    big = ("x" * 76 + "\r\n") * 800
    async with running(cfg, clock):
        for i in range(5):
            sent = await lmtpclient.send(
                lmtp_target(cfg), "anna@example.net", ["youth@myclub.org"], message(subject=f"s{i}", body=big)
            )
            assert sent.data[0].startswith("250"), sent
        await sink.wait_for(15)
        await eventually(lambda: rows(cfg, "SELECT count(*) FROM deliveries WHERE state != 'sent'")[0][0] == 0)
        with sqlite3.connect(cfg.database) as db:
            pages_full = store.space(db)[1]
        clock.advance(2 * DAY)
        await eventually(lambda: counts(cfg)["messages"] == 0, what="serve's retention pass")
        assert counts(cfg) == {"messages": 0, "posts": 0, "deliveries": 0, "bounces": 0}
    with sqlite3.connect(cfg.database) as db:
        _, pages, free = store.space(db)
    assert free < 10 and pages < pages_full - 50  # ~80 pages of posts given back, not just marked free
