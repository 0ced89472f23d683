"""Reports to the administrator: RFC 3464, read back by the email package and flufl.bounce."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from flufl.bounce import all_failures

from lmtpd import queue_admin
from lmtpd.config import Config
from lmtpd.runtime import Runtime, open_runtime
from lmtpd.store.engine import open_database, transaction

from .helpers.club import message, new_club
from .helpers.reports import parse_report
from .helpers.sink import Sink
from .helpers.timing import Clock

ADMIN = "admin@myclub.org"


class DeliveringClub:
    """A club with a runtime and a delivery worker on this loop (no server); posts go in through ingest."""

    def __init__(self, cfg: Config, runtime: Runtime, stack: AsyncExitStack):
        self.cfg, self.runtime, self._stack = cfg, runtime, stack
        assert runtime.worker is not None
        self.worker = runtime.worker

    async def post(self, body: bytes | None = None) -> None:
        replies = await self.runtime.ingest().decide("anna@example.net", ["youth@myclub.org"], body or message())
        assert replies[0].startswith("250")

    def rows(self, sql: str, params=()) -> list[sqlite3.Row]:
        return self.runtime.reader.execute(sql, params).fetchall()

    async def close(self) -> None:
        await self._stack.aclose()


async def make_club(tmp_path, sink: Sink, clock: Clock, queue_extra: str) -> DeliveringClub:
    cfg = await new_club(tmp_path, "127.0.0.1:8024", relay_port=sink.port, queue_extra=queue_extra)
    stack = AsyncExitStack()
    runtime = await stack.enter_async_context(open_runtime(cfg, clock, deliver=True, rng=random.Random(5)))
    return DeliveringClub(cfg, runtime, stack)


@pytest.fixture
async def delivering_club(tmp_path, sink: Sink, clock: Clock) -> AsyncIterator[DeliveringClub]:
    """A club relaying to ``sink`` whose copies expire after two hours in the queue."""
    c = await make_club(tmp_path, sink, clock, "max_queue_lifetime = 7200")
    yield c
    await c.close()


async def test_failed_copies_make_one_report_naming_exactly_them(delivering_club: DeliveringClub, sink: Sink):
    sink.rcpt_replies = {
        "bob@example.net": "550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown",
        "carla@example.com": "554 5.7.1 Service unavailable; client blocked",
    }
    await delivering_club.post()
    await delivering_club.worker.deliver_due()  # anna sent, bob and carla failed: the post is complete
    assert await delivering_club.worker.deliver_due() == {"sent": 1}  # the report itself goes out
    reports = sink.to(ADMIN)
    assert len(reports) == 1
    assert reports[0].mail_from == "<>"  # null envelope sender
    report, blocks = parse_report(reports[0].data)
    assert report["From"] == "Mail Delivery System <MAILER-DAEMON@myclub.org>"
    assert report["Auto-Submitted"] == "auto-replied"
    assert blocks[0]["Reporting-MTA"] == "dns; lists.myclub.org"
    assert blocks[0]["Arrival-Date"]
    per_rcpt = {b["Final-Recipient"]: b for b in blocks[1:]}
    assert set(per_rcpt) == {"rfc822; bob@example.net", "rfc822; carla@example.com"}
    bob = per_rcpt["rfc822; bob@example.net"]
    assert bob["Action"] == "failed" and bob["Status"] == "5.1.1"
    assert bob["Diagnostic-Code"].startswith("smtp; 550 5.1.1 <bob@example.net>")
    assert bob["Remote-MTA"] == "dns; 127.0.0.1" and bob["Last-Attempt-Date"]
    assert per_rcpt["rfc822; carla@example.com"]["Status"] == "5.7.1"
    headers = next(p for p in report.get_payload() if p.get_content_type() == "text/rfc822-headers")
    assert "Subject: Training on Saturday" in headers.get_payload()
    temporary, permanent = all_failures(report)
    assert permanent == {b"bob@example.net", b"carla@example.com"} and not temporary
    # members get nothing about it
    assert {r.rcpt for r in sink.received if r.mail_from == "<>"} == {ADMIN}


async def test_no_report_when_everything_is_delivered(delivering_club: DeliveringClub, sink: Sink):
    await delivering_club.post()
    await delivering_club.worker.deliver_due()
    assert await delivering_club.worker.deliver_due() == {}
    assert sink.to(ADMIN) == []


async def test_retry_schedule_and_expiry_with_an_injected_clock(
    delivering_club: DeliveringClub, sink: Sink, clock: Clock
):
    sink.rcpt_replies = {"bob@example.net": "451 4.2.0 try again later"}
    await delivering_club.post()
    await delivering_club.worker.deliver_due()
    schedule = []
    for _ in range(40):
        due = delivering_club.rows("SELECT next_attempt_at, state FROM deliveries WHERE recipient = 'bob@example.net'")[
            0
        ]
        if due["state"] != "pending":
            break
        schedule.append(round(due["next_attempt_at"] - clock.now))
        clock.now = due["next_attempt_at"]
        await delivering_club.worker.deliver_due()
    # about the copy's age, clamped to [300 s, 3600 s], with +-10% jitter
    assert 270 <= schedule[0] <= 330
    assert all(b >= a * 0.8 for a, b in zip(schedule, schedule[1:], strict=False))
    assert all(d <= 3960 for d in schedule)
    bob = delivering_club.rows("SELECT * FROM deliveries WHERE recipient = 'bob@example.net'")[0]
    assert bob["state"] == "failed" and bob["status"] == "4.4.7"
    await delivering_club.worker.deliver_due()
    report, blocks = parse_report(sink.to(ADMIN)[0].data)
    assert [(b["Final-Recipient"], b["Status"], b["Action"]) for b in blocks[1:]] == [
        ("rfc822; bob@example.net", "4.4.7", "failed")
    ]
    assert blocks[1]["Diagnostic-Code"] == "smtp; 451 4.2.0 try again later"
    temporary, permanent = all_failures(report)
    assert b"bob@example.net" in permanent | temporary


async def test_never_a_report_about_a_report(delivering_club: DeliveringClub, sink: Sink):
    sink.rcpt_replies = {"bob@example.net": "550 5.1.1 unknown", ADMIN: "550 5.1.1 admin mailbox gone"}
    await delivering_club.post()
    await delivering_club.worker.deliver_due()
    await delivering_club.worker.deliver_due()  # the report fails too
    assert delivering_club.rows("SELECT state FROM deliveries WHERE recipient = ?", (ADMIN,))[0][0] == "failed"
    assert await delivering_club.worker.deliver_due() == {}
    assert len(delivering_club.rows("SELECT * FROM posts WHERE kind = 'report'")) == 1


async def test_delay_warning(tmp_path, sink: Sink, clock: Clock):
    club = await make_club(tmp_path, sink, clock, "delay_warning = 3600")
    sink.rcpt_replies = {"bob@example.net": "451 4.2.0 later"}
    await club.post()
    await club.worker.deliver_due()
    assert club.rows("SELECT * FROM posts WHERE kind = 'report'") == []
    for _ in range(10):
        clock.advance(900)
        await club.worker.deliver_due()
    warnings = sink.to(ADMIN)
    assert len(warnings) == 1
    _, blocks = parse_report(warnings[0].data)
    assert [(b["Final-Recipient"], b["Action"]) for b in blocks[1:]] == [("rfc822; bob@example.net", "delayed")]
    await club.close()


async def test_never_a_report_about_a_forward(delivering_club: DeliveringClub, sink: Sink):
    sink.rcpt_replies = {ADMIN: "550 5.1.1 admin mailbox gone"}
    replies = await delivering_club.runtime.ingest().decide(
        "stranger@example.org", ["youth-owner@myclub.org"], message("Stranger <stranger@example.org>")
    )
    assert replies[0].startswith("250") and "forwarded" in replies[0]
    assert [r[0] for r in delivering_club.rows("SELECT kind FROM posts")] == ["forward"]
    await delivering_club.worker.deliver_due()  # the forward fails
    assert delivering_club.rows("SELECT state FROM deliveries")[0][0] == "failed"
    assert await delivering_club.worker.deliver_due() == {}
    assert delivering_club.rows("SELECT * FROM posts WHERE kind = 'report'") == []


async def test_failures_are_reported_at_the_end_of_their_pass_delays_and_expiry_each_once(
    tmp_path, sink: Sink, clock: Clock
):
    """As Postfix: carla's refusal is reported after the pass that made it final, while bob
    is still deferred; bob gets one "delayed" report after delay_warning and a final one
    when his copy expires; never more than one report per post and pass."""
    club = await make_club(tmp_path, sink, clock, "delay_warning = 3600\nmax_queue_lifetime = 14400")
    try:
        sink.rcpt_replies = {
            "bob@example.net": "451 4.2.0 try again later",
            "carla@example.com": "550 5.1.1 <carla@example.com>: user unknown",
        }
        await club.post()
        assert await club.worker.deliver_due() == {"sent": 1, "pending": 1, "failed": 1}
        per_pass = [len(club.rows("SELECT * FROM posts WHERE kind = 'report'"))]
        assert await club.worker.deliver_due() == {"sent": 1}  # the report, at once: bob is still queued
        _, blocks = parse_report(sink.to(ADMIN)[0].data)
        assert [(b["Final-Recipient"], b["Action"]) for b in blocks[1:]] == [("rfc822; carla@example.com", "failed")]
        for _ in range(30):  # bounded: the copy expires after four hours
            clock.advance(900)
            await club.worker.deliver_due()
            per_pass.append(len(club.rows("SELECT * FROM posts WHERE kind = 'report'")))
            if club.rows("SELECT state FROM deliveries WHERE recipient = 'bob@example.net'")[0][0] != "pending":
                break
        await club.worker.deliver_due()
        assert all(b - a <= 1 for a, b in zip(per_pass, per_pass[1:], strict=False))  # one per pass at most
        got = [parse_report(r.data)[1] for r in sink.to(ADMIN)]
        assert [[(b["Final-Recipient"], b["Action"]) for b in blocks[1:]] for blocks in got] == [
            [("rfc822; carla@example.com", "failed")],
            [("rfc822; bob@example.net", "delayed")],
            [("rfc822; bob@example.net", "failed")],
        ]
        assert got[2][1]["Status"] == "4.4.7"
        assert club.rows("SELECT reported_at FROM posts WHERE kind = 'list'")[0][0] is not None  # retention may go
    finally:
        await club.close()


async def test_a_retried_copy_that_fails_again_is_reported_again(delivering_club: DeliveringClub, sink: Sink):
    sink.rcpt_replies = {"bob@example.net": "550 5.1.1 unknown"}
    await delivering_club.post()
    await delivering_club.worker.deliver_due()
    await delivering_club.worker.deliver_due()
    assert len(sink.to(ADMIN)) == 1
    db = await open_database(delivering_club.cfg.database)
    try:  # what `lmtpd queue retry --all-failed` does
        assert await transaction(db, lambda c: queue_admin.retry(c, None, 0.0)) == 1
    finally:
        await db.close()
    await delivering_club.worker.deliver_due()
    await delivering_club.worker.deliver_due()
    assert len(sink.to(ADMIN)) == 2
