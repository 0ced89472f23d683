"""The delivery worker against real SMTP far ends on 127.0.0.1."""

from __future__ import annotations

import asyncio
import random
from email import message_from_bytes

from lmtpd.runtime import open_runtime

from .helpers import lmtpclient
from .helpers.club import lmtp_target, message, rows
from .helpers.sink import Sink
from .helpers.timing import Clock, eventually

YOUTH = ["anna@example.net", "bob@example.net", "carla@example.com"]


async def test_every_member_gets_one_copy_with_list_headers(service, club_config, sink: Sink):
    original = message(body="Line one\r\n.leading dot\r\n")
    t = await lmtpclient.send(lmtp_target(club_config), "anna@example.net", ["youth@myclub.org"], original)
    assert t.data[0].startswith("250")
    await sink.wait_for(3)
    assert sorted(r.rcpt for r in sink.received) == YOUTH
    for copy in sink.received:
        # VERP: the bounce address names the member the copy went to
        local, domain = copy.rcpt.split("@")
        assert copy.mail_from == f"youth-bounces+{local}={domain}@myclub.org"
        msg = message_from_bytes(copy.data)
        assert msg["List-Id"] == '"Youth section" <youth.myclub.org>'
        assert msg["List-Post"] == "<mailto:youth@myclub.org>"
        assert copy.data.endswith(original.split(b"\r\n\r\n", 1)[1])  # body untouched
    # the sink has them before the worker has recorded it: wait for the record
    await eventually(lambda: {r["state"] for r in rows(club_config, "SELECT state FROM deliveries")} == {"sent"})


async def test_two_lists_at_once_each_member_one_copy_per_list(service, club_config, sink: Sink):
    t = await lmtpclient.send(
        lmtp_target(club_config), "anna@example.net", ["youth@myclub.org", "trainers@myclub.org"], message()
    )
    assert [r[:3] for r in t.data] == ["250", "250"]
    await sink.wait_for(5)
    by_list = {}
    for r in sink.received:
        by_list.setdefault(r.mail_from.split("+")[0], []).append(r.rcpt)
    assert sorted(by_list["youth-bounces"]) == YOUTH
    assert sorted(by_list["trainers-bounces"]) == ["anna@example.net", "carla@example.com"]


async def test_replies_decide_sent_deferred_failed(service, club_config, sink: Sink, clock: Clock):
    sink.rcpt_replies = {
        "bob@example.net": "451 4.2.0 mailbox busy",
        "carla@example.com": "550 5.1.1 no such user",
    }
    await lmtpclient.send(lmtp_target(club_config), "anna@example.net", ["youth@myclub.org"], message())
    await sink.wait_for(1)
    for _ in range(100):
        states = {r["recipient"]: r for r in rows(club_config, "SELECT * FROM deliveries")}
        if all(r["attempts"] for r in states.values()):
            break
        await asyncio.sleep(0.05)
    assert states["anna@example.net"]["state"] == "sent"
    bob = states["bob@example.net"]
    assert bob["state"] == "pending" and bob["last_reply"].startswith("451 4.2.0")
    assert clock.now + 270 <= bob["next_attempt_at"] <= clock.now + 330  # minimal_backoff, jittered
    assert states["carla@example.com"]["state"] == "failed"
    assert states["carla@example.com"]["last_reply"] == "550 5.1.1 no such user"
    assert bob["lease_owner"] is None


async def test_retries_with_injected_clock_until_delivered(club_config, sink: Sink, clock: Clock):
    """A far end that is down, then up: the worker retries on schedule, no sleeping."""
    async with open_runtime(club_config, clock, deliver=True, rng=random.Random(7)) as runtime:
        replies = await runtime.ingest().decide("anna@example.net", ["youth@myclub.org"], message())
        assert replies[0].startswith("250")
        sink.rcpt_replies = {a: "421 4.3.2 try later" for a in YOUTH}
        worker = runtime.worker
        assert worker is not None
        assert (await worker.deliver_due())["pending"] == 3
        assert await worker.deliver_due() == {}  # nothing due yet
        clock.advance(200)
        assert await worker.deliver_due() == {}
        clock.advance(200)  # past minimal_backoff (300 s, jittered)
        sink.rcpt_replies = {}
        assert (await worker.deliver_due())["sent"] == 3
    assert sorted(r.rcpt for r in sink.received) == YOUTH


async def test_unreachable_relay_defers_everything(club_config, clock: Clock):
    from dataclasses import replace

    from lmtpd.config import RelayConfig

    cfg = replace(club_config, relay=RelayConfig(host="127.0.0.1", port=1, connections=2, timeout=2))
    async with open_runtime(cfg, clock, deliver=True) as runtime:
        await runtime.ingest().decide("anna@example.net", ["youth@myclub.org"], message())
        assert runtime.worker is not None
        counts = await runtime.worker.deliver_due()
    assert counts["pending"] == 3 and counts["unreachable"] == 3
    last = rows(cfg, "SELECT last_reply FROM deliveries")[0][0]
    assert last.startswith("4.4.1 127.0.0.1[127.0.0.1]:1")
