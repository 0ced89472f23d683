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
import signal
from email import message_from_bytes
from email.utils import parseaddr

import pytest

from lmtpd.config import load

from . import postfix
from .conftest import Sink, eventually, populate, start_serve, start_sink, write_config

why_not = postfix.environment_check()
pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(why_not is not None and not os.environ.get("CI"), reason=why_not or ""),
]

SINK_PORT = postfix.free_port()
MEMBER_DOMAINS = ("example.net", "example.com", "example.org")


@pytest.fixture(scope="module")
def mta():
    if why_not:
        pytest.fail(f"CI must be able to run Postfix: {why_not}")
    routes = {"myclub.org": "lmtp:unix:private/lmtpd"}
    routes.update({d: f"smtp:[127.0.0.1]:{SINK_PORT}" for d in MEMBER_DOMAINS})
    instance = postfix.Postfix("e2e", "myclub.org", routes)
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
async def members_side() -> Sink:
    s = await start_sink(SINK_PORT)
    yield s
    s.server.close()


@pytest.fixture
async def lmtpd_serving(mta, short_dir, members_side):
    config = write_config(short_dir, f"unix:{mta.lmtp_socket}", mta.port, posts_per_day=2)
    cfg = load(config)
    await populate(cfg)
    proc = await start_serve(config)
    yield cfg
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0


async def swaks(mta, sender: str, rcpts: list[str], author: str, subject: str) -> str:
    body = (
        f"From: {author}\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{abs(hash(subject))}.{os.getpid()}@example.net>\r\n\r\n"
        f"Hello everyone,\r\n.a line with a leading dot\r\nsee you!\r\n"
    )
    proc = await asyncio.create_subprocess_exec(
        "swaks",
        "--server",
        f"127.0.0.1:{mta.port}",
        "--helo",
        "client.example.net",
        "--from",
        sender,
        "--to",
        ",".join(rcpts),
        "--data",
        body.replace("\r\n", "\n"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode(errors="replace")
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


async def test_a_members_post_reaches_every_member_of_both_lists(mta, lmtpd_serving, members_side: Sink):
    await swaks(
        mta,
        "anna@example.net",
        ["youth@myclub.org", "trainers@myclub.org"],
        "Anna <anna@example.net>",
        "Saturday training",
    )
    expected = {
        "youth-bounces@myclub.org": ["anna@example.net", "bob@example.net", "carla@example.com"],
        "trainers-bounces@myclub.org": ["anna@example.net", "carla@example.com"],
    }
    await eventually(lambda: len(members_side.received) >= 5, 60, "five copies at the members' side")
    await asyncio.sleep(1.5)  # nothing more may follow
    got: dict[str, list[str]] = {}
    for r in members_side.received:
        got.setdefault(r.mail_from, []).append(r.rcpt)
        msg = message_from_bytes(r.data)
        list_name = r.mail_from.split("-bounces@")[0]
        assert msg["List-Post"] == f"<mailto:{list_name}@myclub.org>"
        assert msg["List-Id"].endswith(f"<{list_name}.myclub.org>")
        assert parseaddr(msg["From"])[1] == "anna@example.net"
        body = msg.get_payload().replace("\r\n", "\n").rstrip("\n")
        assert body == "Hello everyone,\n.a line with a leading dot\nsee you!"
    assert {k: sorted(v) for k, v in got.items()} == expected
    statuses = {(rcpt, status) for rcpt, status, _ in lmtp_results(mta)}
    assert ("youth@myclub.org", "sent") in statuses
    assert ("trainers@myclub.org", "sent") in statuses


async def test_non_member_and_over_quota_posts_are_refused(mta, lmtpd_serving, members_side: Sink):
    await swaks(mta, "stranger@example.org", ["youth@myclub.org"], "stranger@example.org", "buy now")

    def refused(text: str):
        return lambda: any(text in reply and status == "bounced" for _, status, reply in lmtp_results(mta))

    await eventually(refused("is not a member of myclub.org"), 60, "the non-member's refusal")
    # posts_per_day = 2: bob's third post of the day to youth is refused
    for i in range(3):
        await swaks(mta, "bob@example.net", ["youth@myclub.org"], "bob@example.net", f"note {i}")
    await eventually(refused("daily limit reached"), 60, "the quota refusal")

    def copies():  # list copies, not the bounces Postfix itself sends to the senders
        return [r for r in members_side.received if r.mail_from != "<>"]

    await eventually(lambda: len(copies()) >= 6, 60, "bob's posts")
    await asyncio.sleep(1.5)
    assert len(copies()) == 6  # two accepted posts x three youth members; nothing of the stranger's
    assert all(r.mail_from == "youth-bounces@myclub.org" for r in copies())
    assert all(b"buy now" not in r.data for r in copies())
