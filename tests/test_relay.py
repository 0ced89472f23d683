"""The relay (lmtpd.relay) against an aiosmtpd far end on 127.0.0.1 that answers as told at
each stage, and the Outcome contract: 2xx sent, 5xx permanent (but 552 to RCPT), 4xx,
timeouts and lost connections temporary."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

from lmtpd.config import RelayConfig
from lmtpd.relay import Outcome, Session, SessionError, Timeouts, tls_contexts
from lmtpd.routes import Host

from .helpers.mx import free_port_on
from .helpers.sink import Sink, start_sink

SENDER = "youth-bounces+bob=example.net@myclub.org"
LOCAL = Host("127.0.0.1", "127.0.0.1")
COPY = b"From: Anna <anna@example.net>\r\nSubject: [youth] Training\r\n\r\nSee you at 10.\r\n"


async def open_session(port: int, **relay: Any) -> Session:
    return await Session.open(LOCAL, RelayConfig(port=port, **relay), "lists.myclub.org", tls_contexts(None))


@pytest.fixture
async def session(sink: Sink) -> AsyncIterator[Session]:
    """One SMTP session from lmtpd to ``sink``."""
    s = await open_session(sink.port)
    yield s
    await s.close()


def test_an_outcome_is_sent_for_2xx_only():
    assert Outcome(250, "250 2.0.0 Ok").sent
    assert not Outcome(0, "4.4.1 no host to try").sent
    assert not Outcome(354, "354 go ahead").sent
    assert not Outcome(451, "451 4.3.0 later").sent


async def test_a_2xx_is_sent_and_names_the_host(session: Session, sink: Sink):
    outcome = await session.send(SENDER, "bob@example.net", COPY)
    assert outcome == Outcome(250, "250 2.0.0 queued", False, "127.0.0.1", "none")
    assert [(r.mail_from, r.rcpt, r.data) for r in sink.received] == [(SENDER, "bob@example.net", COPY)]


@pytest.mark.parametrize(
    "stage, reply, permanent",
    [
        ("MAIL", "550 5.7.1 sender refused", True),
        ("MAIL", "451 4.3.0 try again", False),
        ("RCPT", "550 5.1.1 no such user", True),
        ("RCPT", "451 4.2.1 mailbox busy", False),
        ("RCPT", "552 5.2.2 mailbox full", False),  # RFC 5321 4.5.3.1.10: retried
        ("DATA", "552 5.3.4 message too big", True),  # after the final dot it is final
        ("DATA", "554 5.7.1 looks like spam", True),
        ("DATA", "451 4.3.0 local trouble", False),
    ],
)
async def test_refusals_at_each_stage(session: Session, sink: Sink, stage: str, reply: str, permanent: bool):
    if stage == "MAIL":
        sink.mail_replies = {SENDER: reply}
    elif stage == "RCPT":
        sink.rcpt_replies = {"bob@example.net": reply}
    else:
        sink.data_reply = reply
    outcome = await session.send(SENDER, "bob@example.net", COPY)
    assert (outcome.code, outcome.reply, outcome.permanent, outcome.sent) == (int(reply[:3]), reply, permanent, False)
    assert not outcome.session_failed and outcome.remote == "127.0.0.1"
    assert sink.received == []
    # the session was reset and goes on: the next copy on it is sent
    sink.mail_replies, sink.data_reply = {}, ""
    assert (await session.send(SENDER, "anna@example.net", COPY)).sent
    assert sink.sessions == 1 and session.transactions == 1


async def test_a_421_ends_the_session_but_not_the_copy(session: Session, sink: Sink):
    sink.rcpt_replies = {"bob@example.net": "421 4.7.0 too many connections"}
    outcome = await session.send(SENDER, "bob@example.net", COPY)
    assert (outcome.code, outcome.permanent, outcome.session_failed) == (421, False, True)


async def test_a_host_slow_after_the_final_dot_is_a_temporary_failure(sink: Sink):
    sink.hold = asyncio.Event()  # takes the message, never says so
    session = await open_session(sink.port, data_done_timeout=1)
    try:
        outcome = await session.send(SENDER, "bob@example.net", COPY)
    finally:
        sink.hold.set()
        await session.close()
    assert (outcome.code, outcome.permanent, outcome.session_failed) == (0, False, True)
    assert outcome.reply == "4.4.2 127.0.0.1: timed out at end of data (1s)"
    assert not session.usable


async def test_a_dropped_connection_is_a_temporary_failure(session: Session, sink: Sink):
    sink.drop_in_data = True
    outcome = await session.send(SENDER, "bob@example.net", COPY)
    assert (outcome.code, outcome.permanent, outcome.session_failed) == (0, False, True)
    assert outcome.reply.startswith("4.4.2 127.0.0.1: connection lost at end of data")


async def test_utf8_addresses_go_out_with_smtputf8_and_a_refusal_is_final(sink: Sink):
    session = await open_session(sink.port)
    try:
        assert (await session.send(SENDER, "zoë@exämple.org", COPY)).sent
    finally:
        await session.close()
    assert [r.rcpt for r in sink.received] == ["zoë@exämple.org"]

    class NoUtf8(SMTP):
        def __init__(self, handler: Sink, **kwargs: Any):
            super().__init__(handler, **{**kwargs, "enable_SMTPUTF8": False})

    plain = await start_sink(protocol=NoUtf8)
    session = await open_session(plain.port)
    try:
        outcome = await session.send(SENDER, "zoë@exämple.org", COPY)
    finally:
        await session.close()
        plain.close()
    # not even tried where SMTPUTF8 is not offered (RFC 6531 3.2), and never retried in vain
    assert (outcome.code, outcome.permanent, outcome.sent) == (0, True, False)
    assert outcome.reply.startswith("5.6.7 127.0.0.1 does not take internationalized addresses")
    assert plain.received == []


async def test_a_host_that_refuses_connections_fails_the_session_setup():
    port = free_port_on("127.0.0.1")
    with pytest.raises(SessionError) as caught:
        await open_session(port)
    assert caught.value.code == 0
    assert caught.value.reply.startswith(f"4.4.1 127.0.0.1[127.0.0.1]:{port}: connect: ")


async def test_a_host_that_never_greets_fails_after_the_greeting_limit():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(SessionError) as caught:
            await open_session(port, helo_timeout=1)
    finally:
        server.close()
    assert caught.value.reply == f"4.4.1 127.0.0.1[127.0.0.1]:{port}: timed out at greeting (1s)"


async def test_a_smarthost_that_must_offer_starttls_and_does_not(sink: Sink):
    with pytest.raises(SessionError, match="4.7.4 127.0.0.1 does not offer STARTTLS"):
        await Session.open(LOCAL, RelayConfig(port=sink.port), "lists.myclub.org", tls_contexts(None), True)


def test_the_old_single_timeout_caps_every_stage():
    default = Timeouts.of(RelayConfig())
    assert (default.connect, default.helo, default.mail, default.data, default.data_done) == (30, 300, 300, 120, 600)
    capped = Timeouts.of(RelayConfig(timeout=10, connect_timeout=5))
    assert (capped.connect, capped.helo, capped.mail, capped.data, capped.data_done) == (5, 10, 10, 10, 10)


async def test_the_message_goes_out_dot_stuffed_with_crlf(sink: Sink):
    """DATA and its final reply have limits of their own, so lmtpd writes the message
    itself: leading dots doubled, every line ending in CRLF, as aiosmtplib did."""
    cfg = RelayConfig(port=sink.port)
    session = await Session.open(Host("127.0.0.1", "127.0.0.1"), cfg, "lists.myclub.org", tls_contexts(None))
    raw = b"Subject: dots\r\n\r\n.one leading dot\n..two\rlast line without an end"
    outcome = await session.send("list-bounces@myclub.org", "bob@example.net", raw)
    await session.close()
    assert outcome.sent and outcome.reply.startswith("250")
    assert sink.received[0].data == b"Subject: dots\r\n\r\n.one leading dot\r\n..two\r\nlast line without an end\r\n"
