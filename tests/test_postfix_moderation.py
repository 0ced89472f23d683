"""End to end, moderation: swaks -> Postfix (policy) -> LMTP -> lmtpd serve -> Postfix -> members' sink.

youth is moderated by carla; trainers needs DKIM or SPF and asks an unproven
author to confirm; news is an announce list. The DNS server on 127.0.0.1 gives
example.net an SPF record that allows no host, so nothing swaks sends is proven.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from email import message_from_bytes
from email.utils import parseaddr

import pytest

from lmtpd import roster
from lmtpd.config import Config
from lmtpd.store import open_database, transaction

from .helpers import dnsserver, postfix
from .helpers.club import add_list, new_club
from .helpers.processes import serving
from .helpers.sink import Sink, start_sink
from .helpers.timing import eventually

pytestmark = postfix.marks()

SINK_PORT = postfix.free_port()


@pytest.fixture(scope="module")
def front_postfix():
    instance = postfix.front("mod", SINK_PORT)
    yield instance
    instance.stop()


@pytest.fixture
async def members_side() -> AsyncIterator[Sink]:
    s = await start_sink(SINK_PORT)
    yield s
    s.close()


@pytest.fixture
async def moderated_club(front_postfix, short_dir, members_side) -> AsyncIterator[Config]:
    zone = dnsserver.Zone()
    zone.add("example.net", "TXT", '"v=spf1 -all"')
    transport, port = await dnsserver.start(zone)
    extra = (
        f'[policy]\nlisten = "unix:{front_postfix.queue}/private/lmtpd-policy"\nsocket_mode = "0666"\n'
        f'[dns]\nnameservers = ["127.0.0.1:{port}"]\ntimeout = 3\n'
    )
    cfg = await new_club(short_dir, f"unix:{front_postfix.lmtp_socket}", front_postfix.port, extra=extra)
    await add_list(cfg, "news", roster.ListSettings(posting="announce", moderators="carla@example.com"))
    db = await open_database(cfg.database)

    async def moderate(db):
        await roster.set_list(db, "youth", {"posting": "moderated", "moderators": "carla@example.com"})
        await roster.set_list(db, "trainers", {"auth_require": "dkim-or-spf", "unauthenticated": "confirm"})

    try:
        await transaction(db, moderate)
    finally:
        await db.close()
    try:
        async with serving(cfg.source):
            yield cfg
    finally:
        transport.close()


async def swaks(
    mta, sender: str, rcpt: str, author: str, subject: str, body: str = "Hello\n", refused: str = ""
) -> str:
    """Mail through Postfix from outside mynetworks; check it was queued, or refused at RCPT with ``refused``."""
    data = f"From: {author}\nTo: {rcpt}\nSubject: {subject}\nMessage-ID: <{abs(hash(subject))}@example.net>\n\n{body}"
    proc = await asyncio.create_subprocess_exec(
        "swaks", "--server", f"127.0.0.1:{mta.port}", "--local-interface", "127.0.0.9",
        "--helo", "client.example.net", "--from", sender, "--to", rcpt, "--data", data,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode(errors="replace")
    if refused:
        assert re.search(rf"<\*\* +{re.escape(refused[:9])} .*{re.escape(refused[10:])}", text), text
    else:
        assert proc.returncode == 0 and re.search(r"<- {2}250 2\.0\.0 Ok: queued", text), text
    return text


def copies_of(sink: Sink, list_name: str, marker: str) -> list[str]:
    return sorted(
        r.rcpt for r in sink.received if r.mail_from.startswith(f"{list_name}-bounces+") and marker.encode() in r.data
    )


def asked(sink: Sink, rcpt: str, subject_part: str) -> list[bytes]:
    return [r.data for r in sink.to(rcpt) if subject_part in (message_from_bytes(r.data)["Subject"] or "")]


async def test_a_held_post_is_released_by_the_moderators_reply(front_postfix, moderated_club, members_side: Sink):
    await swaks(front_postfix, "anna@example.net", "youth@myclub.org", "Anna <anna@example.net>", "Held one")
    await eventually(lambda: asked(members_side, "carla@example.com", "Held for youth"), 60, "the notification")
    notice = asked(members_side, "carla@example.com", "Held for youth")[0]
    assert copies_of(members_side, "youth", "Held one") == []
    address = parseaddr(message_from_bytes(notice)["Reply-To"])[1]
    await swaks(front_postfix, "carla@example.com", address, "Carla <carla@example.com>", "Re: Held", "Approved.\n")
    expected = ["anna@example.net", "bob@example.net", "carla@example.com"]
    await eventually(lambda: copies_of(members_side, "youth", "Held one") == expected, 60, "the released copies")
    # a second reply finds nothing to decide: refused at RCPT by the policy service, nothing sent twice
    await swaks(front_postfix, "carla@example.com", address, "carla@example.com", "Re: again",
                refused="550 5.1.1 <youth-moderate>: no held post")  # fmt: skip
    await asyncio.sleep(1.5)
    assert copies_of(members_side, "youth", "Held one") == expected
    assert "status=bounced" not in front_postfix.log()


async def test_an_unproven_post_waits_for_its_author_and_a_forgery_never_arrives(
    front_postfix, moderated_club, members_side: Sink
):
    await swaks(front_postfix, "anna@example.net", "trainers@myclub.org", "anna@example.net", "Forged one")
    await swaks(front_postfix, "anna@example.net", "trainers@myclub.org", "anna@example.net", "Real one")
    await eventually(lambda: len(asked(members_side, "anna@example.net", "Did you send this")) == 2, 60, "two asks")
    real = next(m for m in asked(members_side, "anna@example.net", "Did you send this") if b"Real one" in m)
    address = parseaddr(message_from_bytes(real)["Reply-To"])[1]
    assert copies_of(members_side, "trainers", "one") == []
    await swaks(front_postfix, "anna@example.net", address, "anna@example.net", "Re: Did you", "Yes, that was me.\n")
    expected = ["anna@example.net", "carla@example.com"]
    await eventually(lambda: copies_of(members_side, "trainers", "Real one") == expected, 60, "the confirmed copies")
    await asyncio.sleep(1.5)
    assert copies_of(members_side, "trainers", "Forged one") == []


async def test_strangers_are_refused_at_rcpt_on_every_kind_of_list(front_postfix, moderated_club, members_side: Sink):
    for rcpt in ("youth@myclub.org", "trainers@myclub.org", "news@myclub.org"):
        await swaks(front_postfix, "eve@example.org", rcpt, "eve@example.org", f"spam to {rcpt}",
                    refused="550 5.7.1 <eve@example.org> is not a member")  # fmt: skip
    await swaks(front_postfix, "bob@example.net", "news@myclub.org", "bob@example.net", "not allowed",
                refused="550 5.7.1 only the moderators of news may post")  # fmt: skip
    await swaks(front_postfix, "eve@example.org", "youth-moderate+0123abcd@myclub.org", "eve@example.org", "guess",
                refused="550 5.1.1 <youth-moderate>: no held post")  # fmt: skip
    await asyncio.sleep(1)
    assert members_side.received == []
    assert "status=bounced" not in front_postfix.log()
