"""End to end: swaks -> Postfix smtpd -> LMTP -> lmtpd serve -> Postfix -> members' sink.

A private Postfix instance accepts mail for myclub.org and hands it to lmtpd over
LMTP on a Unix socket in its private directory; lmtpd relays the copies back
through the same Postfix (its smarthost), which routes the members' domains to an
aiosmtpd sink on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import time
from email import message_from_bytes
from email.utils import parseaddr

import pytest

from lmtpd import bounces
from lmtpd.runtime import open_runtime

from .helpers import postfix
from .helpers.club import new_club
from .helpers.processes import serving
from .helpers.sink import Sink, start_sink
from .helpers.timing import eventually

pytestmark = postfix.marks()

SINK_PORT = postfix.free_port()


@pytest.fixture(scope="module")
def front_postfix():
    instance = postfix.front("e2e", SINK_PORT)
    yield instance
    instance.stop()


@pytest.fixture
async def members_side() -> Sink:
    s = await start_sink(SINK_PORT)
    yield s
    s.server.close()


@pytest.fixture
async def served_club(front_postfix, short_dir, members_side):
    policy = f'[policy]\nlisten = "unix:{front_postfix.queue}/private/lmtpd-policy"\nsocket_mode = "0666"\n'
    cfg = await new_club(
        short_dir, f"unix:{front_postfix.lmtp_socket}", front_postfix.port, extra=policy, posts_per_day=2
    )
    config = cfg.source
    async with serving(config):
        yield cfg


async def swaks(mta, sender: str, rcpts: list[str], author: str, subject: str, refused: str = "") -> str:
    """Post through Postfix from a client outside mynetworks; check queued, or refused at RCPT."""
    body = (
        f"From: {author}\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{abs(hash(subject))}.{os.getpid()}@example.net>\r\n\r\n"
        f"Hello everyone,\r\n.a line with a leading dot\r\nsee you!\r\n"
    )
    proc = await asyncio.create_subprocess_exec(
        "swaks", "--server", f"127.0.0.1:{mta.port}", "--local-interface", "127.0.0.9",
        "--helo", "client.example.net", "--from", sender or "<>", "--to", ",".join(rcpts),
        "--data", body.replace("\r\n", "\n"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode(errors="replace")
    if refused:  # "550 5.7.1 reason": Postfix puts "<rcpt>: Recipient address rejected:" between
        code, reason = refused[:9], refused[10:]
        assert re.search(rf"<\*\* +{re.escape(code)} .*{re.escape(reason)}", text), text
    else:
        assert proc.returncode == 0, text
        assert re.search(r"<- {2}250 2\.0\.0 Ok: queued", text), text
    return text


def lmtp_results(mta, subject_marker: str | None = None) -> list[tuple[str, str, str]]:
    """(recipient, status, reply) for every LMTP delivery in Postfix's log."""
    found = []
    for line in mta.log().splitlines():
        m = re.search(r"to=<([^>]+)>, relay=[^,]*lmtpd[^,]*,.* status=(\w+) \((.*)\)$", line)
        if m:
            found.append(m.groups())
    return found


async def test_a_members_post_reaches_every_member_of_both_lists(front_postfix, served_club, members_side: Sink):
    await swaks(
        front_postfix,
        "anna@example.net",
        ["youth@myclub.org", "trainers@myclub.org"],
        "Anna <anna@example.net>",
        "Saturday training",
    )
    expected = {
        "youth-bounces": ["anna@example.net", "bob@example.net", "carla@example.com"],
        "trainers-bounces": ["anna@example.net", "carla@example.com"],
    }
    await eventually(lambda: len(members_side.received) >= 5, 60, "five copies at the members' side")
    await asyncio.sleep(1.5)  # nothing more may follow
    got: dict[str, list[str]] = {}
    for r in members_side.received:
        local, domain = r.rcpt.split("@")
        assert r.mail_from.endswith(f"-bounces+{local}={domain}@myclub.org")  # VERP
        got.setdefault(r.mail_from.split("+")[0], []).append(r.rcpt)
        msg = message_from_bytes(r.data)
        list_name = r.mail_from.split("-bounces+")[0]
        assert msg["List-Post"] == f"<mailto:{list_name}@myclub.org>"
        assert msg["List-Id"].endswith(f"<{list_name}.myclub.org>")
        assert parseaddr(msg["From"])[1] == "anna@example.net"
        body = msg.get_payload().replace("\r\n", "\n").rstrip("\n")
        assert body == "Hello everyone,\n.a line with a leading dot\nsee you!"
    assert {k: sorted(v) for k, v in got.items()} == expected
    statuses = {(rcpt, status) for rcpt, status, _ in lmtp_results(front_postfix)}
    assert ("youth@myclub.org", "sent") in statuses
    assert ("trainers@myclub.org", "sent") in statuses


async def test_strangers_are_refused_during_the_session_without_backscatter(
    front_postfix, served_club, members_side: Sink
):
    await swaks(front_postfix, "stranger@example.org", ["youth@myclub.org"], "stranger@example.org", "buy now",
                refused="550 5.7.1 <stranger@example.org> is not a member")  # fmt: skip
    await swaks(front_postfix, "anna@example.net", ["chess@myclub.org"], "anna@example.net", "chess?",
                refused="550 5.1.1 <chess@myclub.org>: no such list")  # fmt: skip
    await swaks(front_postfix, "", ["youth@myclub.org"], "anna@example.net", "null sender",
                refused="550 5.7.1")  # fmt: skip
    # posts_per_day = 2: bob's third post of the day to youth is refused at RCPT
    for i in range(2):
        await swaks(front_postfix, "bob@example.net", ["youth@myclub.org"], "bob@example.net", f"note {i}")
    await eventually(lambda: len(members_side.received) >= 6, 60, "bob's posts")
    await swaks(front_postfix, "bob@example.net", ["youth@myclub.org"], "bob@example.net", "note 2",
                refused="550 5.7.1 daily limit reached")  # fmt: skip
    await asyncio.sleep(1.5)
    log = front_postfix.log()
    assert re.search(r"NOQUEUE: reject: RCPT from \S+: 550 5\.7\.1 <youth@myclub.org>: Recipient address rejected: "
                     r"<stranger@example\.org> is not a member", log), log[-3000:]  # fmt: skip
    assert "status=bounced" not in log  # Postfix never took a refused post, so it sends no bounce
    assert front_postfix.queue_ids() == []
    assert len(members_side.received) == 6  # two accepted posts x three youth members
    assert all(r.mail_from.startswith("youth-bounces+") for r in members_side.received)
    assert all(b"buy now" not in r.data for r in members_side.received)


async def test_a_bounce_to_the_verp_address_is_accepted_from_the_null_sender(front_postfix, served_club):
    cfg = served_club
    await swaks(front_postfix, "", ["youth-bounces+bob=example.net@myclub.org"], "MAILER-DAEMON@example.net", "bounce")

    def stored():
        db = sqlite3.connect(cfg.database)
        try:
            return db.execute("SELECT list_name, extension, mail_from FROM bounces").fetchall()
        finally:
            db.close()

    await eventually(lambda: stored() != [], 60, "the bounce to reach lmtpd")
    assert stored() == [("youth", "bob=example.net", "")]


async def test_bounces_through_postfix_disable_a_dead_address(front_postfix, short_dir, members_side: Sink):
    """The far end refuses bob after Postfix took the copy: Postfix bounces to the VERP
    address, the bounce comes back over LMTP, and after threshold-many days bob is off."""
    policy = f'[policy]\nlisten = "unix:{front_postfix.queue}/private/lmtpd-policy"\nsocket_mode = "0666"\n'
    cfg = await new_club(
        short_dir, f"unix:{front_postfix.lmtp_socket}", front_postfix.port, posts_per_day=20, admin="admin@example.com",
        extra=policy + "[bounces]\nthreshold = 3\n",
    )  # fmt: skip
    config = cfg.source
    members_side.rcpt_replies = {
        "bob@example.net": "550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown"
    }
    db = sqlite3.connect(cfg.database)
    db.row_factory = sqlite3.Row
    try:
        async with serving(config):
            start = time.time() - 3 * 86400  # three past days, so what gets queued is due now
            for day in range(3):
                await swaks(front_postfix, "anna@example.net", ["youth@myclub.org"], "anna@example.net", f"day {day}")
                await eventually(
                    lambda n=day + 1: db.execute("SELECT count(*) FROM bounces").fetchone()[0] >= n, 60, "the bounce"
                )
                async with open_runtime(cfg, ingest=False) as runtime:  # one bounce a day, on the injected clock
                    report = await bounces.process(runtime.writer.submit, cfg, start + day * 86400)
                assert report.counts == {"permanent": 1}
            bob = db.execute("SELECT * FROM members WHERE address = 'bob@example.net'").fetchone()
            assert bob["bounce_score"] == 3 and bob["delivery_disabled_at"] is not None
            row = db.execute("SELECT * FROM bounces ORDER BY id LIMIT 1").fetchone()
            assert row["extension"] == "bob=example.net" and row["status"] == "5.1.1" and row["mail_from"] == ""
            # the administrator's summary goes out through Postfix
            await eventually(lambda: members_side.to("admin@example.com") != [], 60, "the admin summary")
            summary = members_side.to("admin@example.com")[0].data.decode()
            assert "<bob@example.net> (Bob)" in summary and "User unknown" in summary
            # bob gets no further copies; the others do
            members_side.received.clear()
            await swaks(front_postfix, "anna@example.net", ["youth@myclub.org"], "anna@example.net", "after")
            await eventually(lambda: len(members_side.received) >= 2, 60, "the next post")
            await asyncio.sleep(1.5)
            assert sorted(r.rcpt for r in members_side.received) == ["anna@example.net", "carla@example.com"]
    finally:
        db.close()
