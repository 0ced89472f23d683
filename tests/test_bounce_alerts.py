"""Deliverability alerts and complaints: what the administrator hears about bounces that score nobody."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from email import message_from_bytes

import pytest

from lmtpd import bounce_alerts, bounces
from lmtpd.config import Config
from lmtpd.runtime import open_runtime
from lmtpd.store import connect_sync
from lmtpd.store.alerts import BlockedFailure

from .helpers.club import DATA, new_club
from .helpers.timing import Clock

ADMIN = "admin@myclub.org"
SPAMHAUS = (
    "550 5.7.1 Service unavailable, Client host [192.0.2.1] blocked using Spamhaus. To request removal from "
    "this list see https://www.spamhaus.org/query/ip/192.0.2.1 (AS3130). [BN1NAM02FT011.eop-nam02.prod.protection]"
)


def blocked_bounce(member: str, remote: str = "mail.protection.outlook.com", diagnostic: str = SPAMHAUS) -> bytes:
    """A Postfix-style DSN: the receiving server refused the copy to ``member``."""
    return (
        "From: MAILER-DAEMON@example.org (Mail Delivery System)\r\n"
        f"To: youth-bounces+{member.replace('@', '=')}@myclub.org\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you that your message could not\r\n"
        "be delivered to one or more recipients.\r\n\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; relay.example.org\r\n\r\n"
        f"Final-Recipient: rfc822; {member}\r\nAction: failed\r\nStatus: 5.7.1\r\n"
        f"Remote-MTA: dns; {remote}\r\nDiagnostic-Code: smtp; {diagnostic}\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: anna@example.net\r\nSubject: Training\r\n\r\n--B--\r\n"
    ).encode()


class Club:
    """A club (no server) receiving bounces through ingest, processing them on the injected clock."""

    def __init__(self, cfg: Config, clock: Clock):
        self.cfg, self.clock = cfg, clock
        self.db = connect_sync(cfg.database)
        self.db.row_factory = sqlite3.Row

    async def receive(self, raw: bytes) -> None:
        to = next(line[3:].strip() for line in raw.decode().splitlines() if line.startswith("To:"))
        async with open_runtime(self.cfg, self.clock) as runtime:
            replies = await runtime.ingest().decide("", [to], raw)
        assert replies[0].endswith("bounce stored"), replies

    async def process(self) -> bounces.RunReport:
        async with open_runtime(self.cfg, self.clock, ingest=False) as runtime:
            return await bounces.process(runtime.writer.submit, self.cfg, self.clock.now)

    def to_admin(self) -> list[bytes]:
        """lmtpd's own mails queued for the administrator, oldest first."""
        rows = self.db.execute(
            "SELECT m.raw FROM posts p JOIN messages m ON m.id = p.message_id JOIN deliveries d ON d.post_id = p.id "
            "WHERE p.kind = 'report' AND d.recipient = ? ORDER BY p.id",
            (ADMIN,),
        ).fetchall()
        return [bytes(r[0]) for r in rows]

    def scores(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT address, bounce_score FROM members").fetchall())


@pytest.fixture
async def club(tmp_path, clock: Clock) -> AsyncIterator[Club]:
    cfg = await new_club(tmp_path, "127.0.0.1:8024", 1, extra="[bounces]\nalert_count = 5\nalert_window = 3600\n")
    c = Club(cfg, clock)
    yield c
    c.db.close()


async def test_many_blocklistings_at_one_provider_make_one_alert_a_day(club: Club, clock: Clock):
    members = ["bob@example.net", "carla@example.com"]
    for i in range(4):
        await club.receive(blocked_bounce(members[i % 2]))
        clock.advance(60)
    report = await club.process()
    assert report.alerts == [] and club.to_admin() == []  # four are not many
    await club.receive(blocked_bounce("bob@example.net"))
    report = await club.process()
    assert len(report.alerts) == 1
    (alert,) = club.to_admin()
    msg = message_from_bytes(alert)
    assert msg["To"] == ADMIN and msg["Auto-Submitted"] == "auto-generated"
    assert msg["Subject"] == "lmtpd: outlook.com refuses the club's mail (blocked, 5 bounces)"
    body = msg.get_payload()
    assert "5 copies to outlook.com were refused" in body
    assert "https://www.spamhaus.org/query/ip/192.0.2.1" in body  # the delisting link, quoted
    assert "blocked using Spamhaus" in body and "delisting" in body
    assert set(club.scores().values()) == {0}  # nobody scored

    # the same provider again within the day: no second alert
    clock.advance(3600)
    for _ in range(5):
        await club.receive(blocked_bounce("carla@example.com"))
    assert (await club.process()).alerts == [] and len(club.to_admin()) == 1
    # a day later the count starts in the window again: the old bounces are out of it
    clock.advance(86400)
    for _ in range(4):
        await club.receive(blocked_bounce("bob@example.net"))
    assert (await club.process()).alerts == []
    await club.receive(blocked_bounce("bob@example.net"))
    assert len((await club.process()).alerts) == 1 and len(club.to_admin()) == 2


async def test_dead_addresses_and_bounces_spread_over_providers_make_no_alert(club: Club, clock: Clock):
    for i in range(6):
        remote = "mail.protection.outlook.com" if i % 2 else "gmail-smtp-in.l.google.com"
        await club.receive(blocked_bounce("bob@example.net", remote))  # three each: not five at one
    for _ in range(5):
        await club.receive(
            blocked_bounce("bob@example.net", "mx.example.net", "550 5.1.1 <bob@example.net>: user unknown")
        )
    report = await club.process()
    assert report.alerts == [] and club.to_admin() == []
    assert club.scores()["bob@example.net"] == 1  # the dead address scored (once a day)


def test_the_provider_is_the_receiving_servers_organisation():
    raw = blocked_bounce("bob@example.net", "mx2.hosting.example.co.uk")
    assert bounce_alerts.provider_of(raw, "", "example.net") == "example.co.uk"
    assert bounce_alerts.provider_of(blocked_bounce("x@y.example", "[192.0.2.7]"), "", "y.example") == "y.example"
    text = "host eu-smtp-inbound-1.mimecast.com[192.0.2.9] said: 554 5.7.1 rejected"
    assert bounce_alerts.provider_of(b"not a report", text, "club-member.example") == "mimecast.com"
    assert bounce_alerts.provider_of(b"", "", "gmx.net") == "gmx.net"
    assert bounce_alerts.organisational_domain("a.b.protection.outlook.com.") == "outlook.com"
    failures = [BlockedFailure(i, "ratelimited", "421 4.7.0 slow down", "yahoo.com", b"") for i in range(3)]
    (alert,) = bounce_alerts.due_alerts(failures, 3)
    assert (alert.provider, alert.reason, alert.count, alert.diagnostics) == (
        "yahoo.com", "ratelimited", 3, ("421 4.7.0 slow down",)
    )  # fmt: skip
    assert bounce_alerts.due_alerts(failures, 4) == []


async def test_a_complaint_is_passed_on_once_and_never_scored(club: Club, clock: Clock):
    raw = (DATA / "bounces" / "arf_complaint.eml").read_bytes()
    raw = raw.replace(b"ben=yahoo.example", b"bob=example.net").replace(b"ben@yahoo.example", b"bob@example.net")
    await club.receive(raw)
    report = await club.process()
    assert len(report.complaints) == 1
    (notice,) = club.to_admin()
    msg = message_from_bytes(notice)
    assert msg["Subject"] == "lmtpd: a complaint about list mail from <bob@example.net>"
    text, attached = msg.get_payload()
    assert "does not count against the member" in text.get_payload()
    assert attached.get_content_type() == "message/rfc822"
    assert "Feedback-Type: abuse" in attached.as_string()
    assert club.scores()["bob@example.net"] == 0
    assert (await club.process()).complaints == [] and len(club.to_admin()) == 1  # once
    async with open_runtime(club.cfg, clock, ingest=False) as runtime:  # re-reading forwards nothing again
        await runtime.writer.submit(lambda db: bounces.reclassify(db, club.cfg, clock.now))
    assert (await club.process()).complaints == [] and len(club.to_admin()) == 1


def test_the_receiving_server_is_read_without_its_comment_or_folding():
    raw = (DATA / "bounces" / "gmail_no_such_user.eml").read_bytes()  # "dns; gmail-smtp-in.l.google.com. (142...)"
    assert bounce_alerts.provider_of(raw, "", "gmail.example") == "gmail.com"  # a known provider
    folded = raw.replace(b"Remote-MTA: dns; gmail-smtp-in.l.google.com.", b"Remote-MTA: dns;\r\n mx.example.com\r\n")
    assert bounce_alerts.provider_of(folded, "", "gmail.example") == "example.com"
