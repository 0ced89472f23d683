"""End to end: a reminder due in a few seconds, from ``lmtpd serve`` through the real Postfix to every member.

A private Postfix instance is the smarthost and routes the members' domains to an
aiosmtpd sink; the copies must carry the list headers and a DKIM signature of the
club domain that verifies against the published key.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from email import message_from_bytes

import dkim
import pytest

from lmtpd import reminder_admin
from lmtpd.reminder_admin import Schedule
from lmtpd.store import open_database, transaction

from .helpers import postfix
from .helpers.club import new_club
from .helpers.processes import serving
from .helpers.signing import dkim_key
from .helpers.sink import Sink, start_sink
from .helpers.timing import eventually

why_not = postfix.environment_check()
pytestmark = postfix.marks()

SINK_PORT = postfix.free_port()
YOUTH = {"anna@example.net", "bob@example.net", "carla@example.com"}


@pytest.fixture(scope="module")
def smarthost():
    if why_not:
        pytest.fail(f"CI must be able to run Postfix: {why_not}")
    routes = {d: f"smtp:[127.0.0.1]:{SINK_PORT}" for d in ("example.net", "example.com")}
    instance = postfix.Postfix("reminders", "myclub.org", routes, {"mynetworks": "127.0.0.1/32"})
    instance.start()
    yield instance
    instance.stop()


async def test_a_reminder_reaches_every_member_through_postfix_signed(smarthost, short_dir):
    members_side: Sink = await start_sink(SINK_PORT)
    try:
        key, record = dkim_key()
        (short_dir / "dkim.pem").write_bytes(key)
        dkim_section = '[dkim]\nselector = "sel"\nkey_file = "dkim.pem"\n'
        cfg = await new_club(short_dir, "", smarthost.port, extra=dkim_section)
        due = datetime.fromtimestamp(time.time() + 4, UTC).strftime("%Y-%m-%d %H:%M:%S")
        db = await open_database(cfg.database)
        try:
            await transaction(
                db,
                lambda db: reminder_admin.add(
                    db, "youth", "Training tonight", "18:00, pitch 2.\n", Schedule("at", due, "UTC"), time.time()
                ),
            )
        finally:
            await db.close()
        async with serving(cfg.source):
            await eventually(lambda: len(members_side.received) >= 3, 60, "three copies at the members' side")
        published = "".join(re.findall(r'"([^"]*)"', record)).encode()  # the TXT record, as DNS would give it
        assert {r.rcpt for r in members_side.received} == YOUTH and len(members_side.received) == 3
        for r in members_side.received:
            local, domain = r.rcpt.split("@")
            assert r.mail_from == f"youth-bounces+{local}={domain}@myclub.org"
            msg = message_from_bytes(r.data)
            assert msg["List-Id"] == '"Youth section" <youth.myclub.org>'
            assert msg["List-Post"] == "<mailto:youth@myclub.org>"
            assert msg["Subject"] == "[youth] Training tonight"
            assert "Postfix" in str(msg["Received"]) or "postfix" in r.data.decode(errors="replace").lower()
            assert dkim.verify(
                r.data, dnsfunc=lambda name, timeout=5: published if name == b"sel._domainkey.myclub.org." else None
            )
    finally:
        members_side.close()
