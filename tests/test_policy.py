"""The Postfix policy service: protocol and decisions, on a real socket and database."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lmtpd.daemon import Service

from .helpers.club import new_club
from .helpers.policyclient import ask, connect, request
from .helpers.sink import Sink
from .helpers.timing import Clock


async def start_policy_service(folder: Path, sink: Sink, clock: Clock, policy: str = "") -> Service:
    socket_path = folder / "policy.sock"
    cfg = await new_club(
        folder, f"unix:{folder}/lmtpd.sock", sink.port, extra=f'[policy]\nlisten = "unix:{socket_path}"\n{policy}'
    )
    svc = Service(cfg, clock)
    await svc.start()
    return svc


@pytest.fixture
async def policy_service(short_dir: Path, sink: Sink, clock: Clock) -> AsyncIterator[Service]:
    """The club's service with its policy socket in ``short_dir``, no extra policy settings."""
    svc = await start_policy_service(short_dir, sink, clock)
    yield svc
    await svc.stop()


async def test_decisions_several_requests_on_one_connection(policy_service: Service):
    svc = policy_service
    cfg = svc.cfg
    r, w = await connect(cfg)
    cases = [
        ("anna@example.net", "youth@myclub.org", "DUNNO"),
        ("ANNA@Example.NET", "Youth@MyClub.org", "DUNNO"),
        ("stranger@example.org", "youth@myclub.org", "550 5.7.1 <stranger@example.org> is not a member"),
        ("bob@example.net", "trainers@myclub.org", "550 5.7.1 only members of trainers may post"),
        ("anna@example.net", "chess@myclub.org", "550 5.1.1 <chess@myclub.org>: no such list"),
        ("", "youth@myclub.org", "550 5.7.1 <youth@myclub.org>: a list does not take mail from the null sender"),
        ("", "youth-bounces@myclub.org", "DUNNO"),
        ("", "youth-bounces+bob=example.net@myclub.org", "DUNNO"),
        ("mailer-daemon@example.org", "chess-bounces@myclub.org", "550 5.1.1"),
        ("anna@example.net", "youth-request@myclub.org", "DUNNO"),  # forwarded to the owner
        ("stranger@example.org", "youth-owner@myclub.org", "DUNNO"),
        ("anna@example.net", "chess-request@myclub.org", "550 5.1.1"),
        ("stranger@example.org", "someone@example.com", "DUNNO"),
    ]
    for sender, recipient, expected in cases:
        action = await ask(r, w, request(sender=sender, recipient=recipient))
        assert action.startswith(expected), (sender, recipient, action)
    assert svc.policy.requests == len(cases)
    # other protocol states are not ours to judge
    assert (
        await ask(r, w, request(protocol_state="DATA", sender="x@example.org", recipient="youth@myclub.org")) == "DUNNO"
    )
    w.close()


async def test_member_at_the_daily_limit_is_refused_at_rcpt(policy_service: Service, clock: Clock):
    svc = policy_service
    cfg = svc.cfg
    db = sqlite3.connect(cfg.database)
    day = time.strftime("%Y-%m-%d", time.localtime(clock.now))
    db.execute(
        "INSERT INTO quota_use SELECT m.id, l.id, ?, 5 FROM members m, lists l "
        "WHERE m.address = 'anna@example.net' AND l.name = 'youth'",
        (day,),
    )
    db.commit()
    db.close()
    r, w = await connect(cfg)
    action = await ask(r, w, request(sender="anna@example.net", recipient="youth@myclub.org"))
    assert action == "550 5.7.1 daily limit reached: 5 posts per day to youth"
    assert await ask(r, w, request(sender="anna@example.net", recipient="trainers@myclub.org")) == "DUNNO"
    clock.advance(86400)
    assert await ask(r, w, request(sender="anna@example.net", recipient="youth@myclub.org")) == "DUNNO"
    w.close()


async def test_unreadable_requests_are_deferred_never_waved_through(policy_service: Service):
    """A request we cannot read gets DEFER_IF_PERMIT, not DUNNO; the connection goes on."""
    cfg = policy_service.cfg
    r, w = await connect(cfg)
    assert (await ask(r, w, b"this is not a policy request\nnor=this\n\n")).startswith("DEFER_IF_PERMIT ")
    assert (await ask(r, w, b"=novalue\n\n")).startswith("DEFER_IF_PERMIT ")
    assert await ask(r, w, b"request=something_else\nrecipient=youth@myclub.org\n\n") == "DUNNO"
    # a stranger's request padded past 100 attributes: once DUNNO, so the stranger passed
    padded = request(sender="stranger@example.org", recipient="youth@myclub.org")
    padding = b"".join(b"x_pad%d=1\n" % i for i in range(120))
    assert (await ask(r, w, padding + padded)).startswith("DEFER_IF_PERMIT ")
    action = await ask(r, w, request(sender="stranger@example.org", recipient="youth@myclub.org"))
    assert action.startswith("550 5.7.1")
    w.close()


async def test_attributes_that_are_not_utf8_get_a_clear_answer(policy_service: Service):
    cfg = policy_service.cfg
    r, w = await connect(cfg)
    stranger = request(sender="anna@example.net", recipient="youth@myclub.org").replace(b"anna@", b"an\xffna@")
    assert (await ask(r, w, stranger)).startswith("550 5.7.1 <an?na@example.net> is not a member")
    odd_list = request(sender="anna@example.net", recipient="youth@myclub.org").replace(b"youth@", b"yo\xffuth@")
    assert (await ask(r, w, odd_list)).startswith("550 5.1.1 <yo?uth@myclub.org>: no such list")
    assert await ask(r, w, request(sender="anna@example.net", recipient="youth@myclub.org")) == "DUNNO"
    w.close()


async def test_a_request_split_across_reads(policy_service: Service):
    cfg = policy_service.cfg
    r, w = await connect(cfg)
    data = request(sender="stranger@example.org", recipient="youth@myclub.org") * 2
    for i in range(0, len(data), 7):
        w.write(data[i : i + 7])
        await w.drain()
        await asyncio.sleep(0.001)
    first = await asyncio.wait_for(r.readuntil(b"\n\n"), 5)
    second = await asyncio.wait_for(r.readuntil(b"\n\n"), 5)
    assert first == second and first.startswith(b"action=550 5.7.1")
    w.close()


async def test_five_hundred_concurrent_connections(policy_service: Service):
    cfg = policy_service.cfg

    async def one(i: int) -> str:
        r, w = await connect(cfg)
        sender = "anna@example.net" if i % 2 else f"x{i}@example.org"
        action = await ask(r, w, request(sender=sender, recipient="youth@myclub.org"))
        w.close()
        return action

    actions = await asyncio.gather(*(one(i) for i in range(500)))
    assert actions.count("DUNNO") == 250
    assert sum(a.startswith("550 5.7.1") for a in actions) == 250


async def test_internal_error_answers_451(policy_service: Service):
    svc = policy_service
    cfg = svc.cfg
    r, w = await connect(cfg)
    svc.policy.reader = sqlite3.connect(":memory:")  # no tables: every query fails
    assert await ask(r, w, request(sender="anna@example.net", recipient="youth@myclub.org")) == (
        "451 4.3.0 Temporary failure, please try again later"
    )
    w.close()


async def test_an_overlong_line_closes_only_that_connection(policy_service: Service):
    cfg = policy_service.cfg
    r, w = await connect(cfg)
    w.write(b"recipient=" + b"x" * 100_000 + b"\n\n")
    await w.drain()
    assert await asyncio.wait_for(r.read(), 5) == b""
    r2, w2 = await connect(cfg)
    assert await ask(r2, w2, request(sender="anna@example.net", recipient="youth@myclub.org")) == "DUNNO"
    w2.close()


async def test_tls_rules(short_dir: Path, sink: Sink, clock: Clock):
    svc = await start_policy_service(
        short_dir, sink, clock, 'require_tls = true\ntrusted_clients = ["AB:CD:EF", "CN=gateway.myclub.org"]'
    )
    cfg = svc.cfg
    try:
        r, w = await connect(cfg)
        plain = request(sender="anna@example.net", recipient="youth@myclub.org")
        assert await ask(r, w, plain) == "450 4.7.0 posts to this list must be sent over TLS"
        untrusted = request(sender="anna@example.net", recipient="youth@myclub.org", encryption_protocol="TLSv1.3")
        assert (await ask(r, w, untrusted)).startswith("450 4.7.1")
        for attrs in ({"ccert_fingerprint": "ab:cd:ef"}, {"ccert_subject": "CN=gateway.myclub.org"}):
            ok = request(sender="anna@example.net", recipient="youth@myclub.org", encryption_protocol="TLSv1.3",
                         **attrs)  # fmt: skip
            assert await ask(r, w, ok) == "DUNNO"
        # bounces are not posts: no TLS rules for them
        assert await ask(r, w, request(sender="", recipient="youth-bounces@myclub.org")) == "DUNNO"
        w.close()
    finally:
        await svc.stop()
    assert not cfg.policy.listen.path.exists()
