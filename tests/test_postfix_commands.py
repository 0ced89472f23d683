"""End to end, mail commands: swaks -> Postfix (policy, milter) -> LMTP -> lmtpd serve -> Postfix -> sink.

One private Postfix for the module. A milter stands in for OpenDKIM: a mail with
``X-Test-Verdict: pass`` arrives with the trusted Authentication-Results of
mx.myclub.org (kept by the header_checks recipe of postfix-lmtp.cf), so its author
is proven; without it nothing is, and a change waits for a confirmation.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from email import message_from_bytes
from email.message import Message
from email.utils import parseaddr
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from lmtpd.config import Config

from .helpers import postfix
from .helpers.club import REPO, new_club, rows
from .helpers.milter import Milter
from .helpers.processes import serving
from .helpers.sink import Sink, start_sink
from .helpers.timing import eventually

pytestmark = postfix.marks()

SINK_PORT = postfix.free_port()
AUTHSERV_ID = "mx.myclub.org"
PROVEN = "X-Test-Verdict: pass"  # the milter's verdict: aligned DKIM for example.net


@pytest.fixture(scope="module")
def milter():
    m = Milter(AUTHSERV_ID, "example.net")
    m.start()
    yield m
    m.close()


@pytest.fixture(scope="module")
def front_postfix(milter):
    extra = {
        "header_checks": postfix.header_checks_recipe(REPO),
        "smtpd_milters": f"inet:127.0.0.1:{milter.port}",
        "milter_default_action": "tempfail",
    }
    instance = postfix.front("cmd", SINK_PORT, extra)
    yield instance
    instance.stop()


@pytest.fixture
async def members_side() -> AsyncIterator[Sink]:
    s = await start_sink(SINK_PORT)
    yield s
    s.close()


@pytest.fixture
async def club(front_postfix, short_dir, members_side) -> AsyncIterator[Config]:
    extra = (
        f'[policy]\nlisten = "unix:{front_postfix.queue}/private/lmtpd-policy"\nsocket_mode = "0666"\n'
        f'[auth]\nrequire = "none"\nauthserv_id = "{AUTHSERV_ID}"\n'
    )
    cfg = await new_club(short_dir, f"unix:{front_postfix.lmtp_socket}", front_postfix.port, extra=extra)
    async with serving(cfg.source):
        yield cfg


async def swaks(
    mta,
    sender: str,
    rcpt: str,
    subject: str,
    body: str = "",
    extra: list[str] | None = None,
    refused: str = "",
    author: str = "",
) -> str:
    """Mail from outside mynetworks (From: ``author``, else the envelope sender); its Message-ID, or check
    the refusal at RCPT."""
    msg_id = f"<{abs(hash((sender, rcpt, subject, body)))}.{os.getpid()}@example.net>"
    head = [f"From: {author or sender}", f"To: {rcpt}", f"Subject: {subject}", f"Message-ID: {msg_id}"]
    lines = [*(extra or []), *head, ""]
    proc = await asyncio.create_subprocess_exec(
        "swaks", "--server", f"127.0.0.1:{mta.port}", "--local-interface", "127.0.0.9",
        "--helo", "client.example.net", "--from", sender, "--to", rcpt, "--data", "\n".join(lines) + "\n" + body,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode(errors="replace")
    if refused:
        assert re.search(rf"<\*\* +{re.escape(refused[:9])} .*{re.escape(refused[10:])}", text), text
    else:
        assert proc.returncode == 0 and re.search(r"<- {2}250 2\.0\.0 Ok: queued", text), text
    return msg_id


def answers(sink: Sink, rcpt: str) -> list[Message]:
    """What lmtpd answered ``rcpt``: mail with the null envelope sender."""
    return [message_from_bytes(r.data) for r in sink.to(rcpt) if r.mail_from in ("", "<>")]


def copies(sink: Sink, list_name: str, marker: str) -> list[str]:
    return sorted(
        r.rcpt for r in sink.received if r.mail_from.startswith(f"{list_name}-bounces+") and marker.encode() in r.data
    )


def text_of(msg: Message) -> str:
    payload = msg.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


def lists_of(cfg: Config, address: str) -> list[str]:
    return [
        r[0]
        for r in rows(
            cfg,
            "SELECT l.name FROM memberships ms JOIN lists l ON l.id = ms.list_id JOIN members m ON m.id = ms.member_id"
            " WHERE m.address = ? ORDER BY l.name",
            (address,),
        )
    ]


async def test_help_is_answered_at_the_sink_with_rfc3834_headers(front_postfix, club, members_side: Sink):
    msg_id = await swaks(front_postfix, "anna@example.net", "youth-request@myclub.org", "help")
    await eventually(lambda: answers(members_side, "anna@example.net"), 60, "the answer")
    [reply] = answers(members_side, "anna@example.net")
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["In-Reply-To"] == msg_id and msg_id in reply["References"]
    assert parseaddr(reply["From"])[1] == "youth-request@myclub.org"
    assert parseaddr(reply["To"])[1] == "anna@example.net"
    assert "join youth" in text_of(reply) and "leave youth" in text_of(reply)
    assert "status=bounced" not in front_postfix.log()


async def test_a_proven_leave_takes_effect_at_once_and_the_next_post_skips_the_member(
    front_postfix, club, members_side: Sink
):
    await swaks(front_postfix, "bob@example.net", "lists@myclub.org", "leave youth", extra=[PROVEN])
    await eventually(lambda: answers(members_side, "bob@example.net"), 60, "the answer")
    assert "You left youth@myclub.org" in text_of(answers(members_side, "bob@example.net")[0])
    assert lists_of(club, "bob@example.net") == []
    await swaks(front_postfix, "anna@example.net", "youth@myclub.org", "After bob left", "Hello\n")
    await eventually(lambda: len(copies(members_side, "youth", "After bob left")) >= 2, 60, "the copies")
    await asyncio.sleep(1.5)
    assert copies(members_side, "youth", "After bob left") == ["anna@example.net", "carla@example.com"]


async def test_an_unproven_leave_waits_for_the_reply_and_a_forged_one_changes_nothing(
    front_postfix, club, members_side: Sink
):
    # a forgery in bob's name, to the address open to anyone: only bob is asked, and he never answers
    await swaks(front_postfix, "eve@example.org", "youth-leave@myclub.org", "unsubscribe",
                author="Bob <bob@example.net>", extra=["Reply-To: eve@example.org"])  # fmt: skip
    await swaks(front_postfix, "carla@example.com", "youth-request@myclub.org", "leave youth")
    await eventually(lambda: answers(members_side, "carla@example.com"), 60, "carla's confirmation")
    [ask] = answers(members_side, "carla@example.com")
    assert ask["Subject"].startswith("confirm ") and ask["Auto-Submitted"] == "auto-replied"
    assert lists_of(club, "carla@example.com") == ["trainers", "youth"]
    confirm_to = parseaddr(ask["Reply-To"])[1]
    assert re.fullmatch(r"youth-confirm\+[0-9a-f]{32}@myclub\.org", confirm_to), confirm_to
    await swaks(front_postfix, "carla@example.com", confirm_to, f"Re: {ask['Subject']}", "> Someone asked\n")
    await eventually(lambda: lists_of(club, "carla@example.com") == ["trainers"], 60, "carla's leave")
    await eventually(lambda: len(answers(members_side, "carla@example.com")) == 2, 60, "the confirmed answer")
    assert "You left youth" in text_of(answers(members_side, "carla@example.com")[1])
    await swaks(front_postfix, "anna@example.net", "youth@myclub.org", "After carla left", "Hello\n")
    await eventually(lambda: len(copies(members_side, "youth", "After carla left")) >= 2, 60, "the copies")
    await asyncio.sleep(1.5)
    assert copies(members_side, "youth", "After carla left") == ["anna@example.net", "bob@example.net"]
    assert members_side.to("eve@example.org") == []  # the forger hears nothing, bob keeps youth
    [bobs_ask] = answers(members_side, "bob@example.net")
    assert bobs_ask["Subject"].startswith("confirm ")
    assert lists_of(club, "bob@example.net") == ["youth"]


async def test_list_unsubscribe_as_gmail_sends_it(front_postfix, club, members_side: Sink):
    await swaks(front_postfix, "anna@example.net", "youth@myclub.org", "A post with the header", "Hello\n")
    await eventually(lambda: copies(members_side, "youth", "A post with the header"), 60, "bob's copy")
    await eventually(lambda: members_side.to("bob@example.net"), 60, "bob's copy")
    copy = message_from_bytes(members_side.to("bob@example.net")[0].data)
    url = urlsplit(copy["List-Unsubscribe"].strip("<>"))
    assert url.scheme == "mailto"
    to, subject = unquote(url.path), parse_qs(url.query)["subject"][0]
    # Gmail's one-click button: the URL's subject, a generated line, signed by gmail (here: the milter's pass)
    await swaks(front_postfix, "bob@example.net", to, subject, "This message was automatically generated by Gmail.\n",
                extra=[PROVEN, "Content-Type: text/plain; charset=UTF-8"])  # fmt: skip
    await eventually(lambda: answers(members_side, "bob@example.net"), 60, "the answer")
    assert lists_of(club, "bob@example.net") == []
    assert "You left youth" in text_of(answers(members_side, "bob@example.net")[0])


async def test_no_answer_to_a_vacation_reply_a_stranger_or_the_eleventh_mail(front_postfix, club, members_side: Sink):
    await swaks(front_postfix, "anna@example.net", "youth-request@myclub.org", "Out of office: help",
                "I am away until Monday.\n", extra=["Auto-Submitted: auto-replied"])  # fmt: skip
    await swaks(front_postfix, "eve@example.org", "youth-request@myclub.org", "help",
                refused="550 5.7.1 <eve@example.org> is not a member")  # fmt: skip
    for i in range(11):
        await swaks(front_postfix, "dave@example.com", "lists@myclub.org", f"status {i}")
    logged = "SELECT count(DISTINCT queue_id) FROM command_log"
    await eventually(lambda: rows(club, logged)[0][0] == 12, 60, "twelve command mails logged")
    await eventually(lambda: len(answers(members_side, "dave@example.com")) >= 10, 60, "ten answers")
    await asyncio.sleep(2)
    replies = answers(members_side, "dave@example.com")
    assert len(replies) == 10
    assert sum("answers no more" in text_of(r) for r in replies) == 1
    assert answers(members_side, "anna@example.net") == [] and members_side.to("eve@example.org") == []
    outcomes = [r[0] for r in rows(club, "SELECT outcome FROM command_log WHERE address = 'anna@example.net'")]
    assert outcomes == ["dropped: Auto-Submitted: auto-replied"]
    assert rows(club, "SELECT outcome FROM command_log ORDER BY id DESC LIMIT 1")[0][0] == "rate limited"
