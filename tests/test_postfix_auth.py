"""End to end, the documented recipe for trusting a milter's Authentication-Results.

A private Postfix with postfix-lmtp.cf's header_checks line and a milter standing
in for OpenDKIM (tests/helpers/milter.py) hands posts to ``lmtpd serve``: a look-alike
header added by the sender is removed by Postfix before lmtpd sees it, the
milter's own verdict is the one lmtpd believes, and no copy carries either.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
from pathlib import Path

import pytest

from .helpers import dnsserver, postfix
from .helpers.club import REPO, new_club
from .helpers.milter import Milter
from .helpers.processes import serving

why_not = postfix.environment_check()
pytestmark = postfix.marks()

AUTHSERV_ID = "mx.myclub.org"  # what postfix-lmtp.cf's example line names
FORGED = f"Authentication-Results: {AUTHSERV_ID}; dkim=pass header.d=example.net header.s=sel"


def recipe() -> str:
    """The header_checks value, as a user pastes it from postfix-lmtp.cf."""
    text = (REPO / "postfix-lmtp.cf").read_text()
    m = re.search(r"^header_checks = (.+)$", text, re.M)
    assert m, "postfix-lmtp.cf lost its header_checks recipe"
    return m.group(1)


@pytest.fixture(scope="module")
def milter():
    m = Milter(AUTHSERV_ID, "example.net")
    m.start()
    yield m
    m.close()


@pytest.fixture(scope="module")
def milter_postfix(milter):
    if why_not:
        pytest.fail(f"CI must be able to run Postfix: {why_not}")
    settings = {
        "mynetworks": "127.0.0.1/32",
        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        "header_checks": recipe(),
        "smtpd_milters": f"inet:127.0.0.1:{milter.port}",
        "milter_default_action": "tempfail",
    }
    instance = postfix.Postfix("auth", "myclub.org", {"myclub.org": "lmtp:unix:private/lmtpd"}, settings)
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
async def verifying_served_club(milter_postfix, short_dir: Path):
    zone = dnsserver.Zone()
    zone.add("example.net", "TXT", '"v=spf1 -all"')  # no host may send for it: only DKIM can prove a post
    transport, port = await dnsserver.start(zone)
    extra = (
        f'[dns]\nnameservers = ["127.0.0.1:{port}"]\ntimeout = 3\n'
        f'[auth]\nrequire = "dkim-or-spf"\nauthserv_id = "{AUTHSERV_ID}"\n'
    )
    cfg = await new_club(
        short_dir, f"unix:{milter_postfix.lmtp_socket}", milter_postfix.port, extra=extra, relay_extra="deliver = false"
    )
    config = cfg.source
    try:
        async with serving(config):
            yield cfg
    finally:
        transport.close()


async def post(mta, marker: str, extra_headers: list[str]) -> str:
    """Send a post of anna@example.net through Postfix from outside; its Postfix queue id."""
    body = "\n".join(
        [*extra_headers, "From: Anna <anna@example.net>", "To: youth@myclub.org", f"Subject: {marker}",
         f"Message-ID: <{marker}.{os.getpid()}@example.net>", "", "Hello", ""]
    )  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        "swaks", "--server", f"127.0.0.1:{mta.port}", "--local-interface", "127.0.0.9",
        "--helo", "client.example.net", "--from", "anna@example.net", "--to", "youth@myclub.org",
        "--data", body, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    m = re.search(r"<- {2}250 2\.0\.0 Ok: queued as (\w+)", out.decode(errors="replace"))
    assert m, out.decode(errors="replace")
    return m.group(1)


async def lmtp_outcome(mta, queue_id: str) -> tuple[str, str]:
    """(status, reply) Postfix logged for its LMTP delivery of ``queue_id``."""
    pattern = re.compile(rf"{queue_id}: to=<youth@myclub.org>, relay=[^,]*lmtpd[^,]*,.* status=(\w+) \((.*)\)$", re.M)
    for _ in range(300):
        m = pattern.search(mta.log())
        if m:
            return m.group(1), m.group(2)
        mta.flush()
        await asyncio.sleep(0.1)
    raise AssertionError(f"no LMTP delivery of {queue_id} in the log:\n{mta.log()[-3000:]}")


def stored(cfg, marker: str) -> list[sqlite3.Row]:
    db = sqlite3.connect(cfg.database)
    db.row_factory = sqlite3.Row
    try:
        return db.execute(
            "SELECT m.auth, m.raw, p.headers FROM messages m JOIN posts p ON p.message_id = m.id WHERE m.subject = ?",
            (marker,),
        ).fetchall()
    finally:
        db.close()


async def test_the_milters_verdict_is_believed_and_not_copied(milter_postfix, milter, verifying_served_club):
    status, reply = await lmtp_outcome(
        milter_postfix, await post(milter_postfix, "milter-pass", ["X-Test-Verdict: pass"])
    )
    assert status == "sent" and "250 2.0.0" in reply, reply
    (row,) = stored(verifying_served_club, "milter-pass")
    assert row["auth"] == f"dkim=pass header.d=example.net; spf=none; by={AUTHSERV_ID}"
    assert b"Authentication-Results" not in bytes(row["raw"]) and b"Authentication-Results" not in row["headers"]


async def test_a_forged_pass_cannot_outvote_the_milters_fail(milter_postfix, milter, verifying_served_club):
    queue_id = await post(milter_postfix, "forged-vs-fail", [FORGED, "X-Test-Verdict: fail"])
    status, reply = await lmtp_outcome(milter_postfix, queue_id)
    assert status == "bounced" and "550 5.7.1" in reply and f"by={AUTHSERV_ID}" in reply, reply
    assert stored(verifying_served_club, "forged-vs-fail") == []


async def test_a_forged_pass_alone_is_removed_and_lmtpd_checks_itself(milter_postfix, milter, verifying_served_club):
    queue_id = await post(milter_postfix, "forged-alone", [FORGED, FORGED.replace("mx.myclub", "(look) MX.MyClub")])
    status, reply = await lmtp_outcome(milter_postfix, queue_id)
    assert status == "bounced" and "550 5.7.1" in reply and "by=verified" in reply, reply
    assert stored(verifying_served_club, "forged-alone") == []
