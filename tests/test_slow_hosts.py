"""Direct MX mode with a tarpit: one slow destination never holds up the others.

A tarpit is a real server on 127.0.0.2 that drips ``220-`` lines instead of greeting
(so only a limit on the whole greeting ends the wait, never one per line), or greets
and then sits on RCPT. Healthy domains are aiosmtpd sinks on 127.0.0.3 and .4; DNS is
the test server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections import Counter
from dataclasses import replace

from aiosmtpd.smtp import SMTP

from lmtpd import queue
from lmtpd.config import Config
from lmtpd.delivery import Worker
from lmtpd.runtime import Runtime, open_runtime
from lmtpd.store import outbound

from .helpers.club import message
from .helpers.mx import Net, deliveries, post_and_deliver
from .helpers.sink import Sink
from .helpers.timing import Clock, eventually

SLOW = [f"a{i}@slow.example" for i in range(4)]  # sort first: their copies are claimed first
HEALTHY = ["hal@ok-a.example", "hugo@ok-a.example", "ines@ok-b.example", "ivo@ok-b.example"]


def tarpit(release: asyncio.Event) -> type[SMTP]:
    """An SMTP server that keeps every client waiting for its greeting until ``release``."""

    class Tarpit(SMTP):
        async def _handle_client(self):
            while not release.is_set():
                if self.transport is None or self.transport.is_closing():
                    return  # the client gave up
                try:
                    await self.push("220-mx.slow.example is in no hurry")
                    await asyncio.wait_for(release.wait(), 0.5)
                except (TimeoutError, ConnectionError):
                    continue
            await super()._handle_client()

    return Tarpit


class SlowRcpt(SMTP):
    """Greets at once, then never answers RCPT."""

    async def smtp_RCPT(self, arg):
        await asyncio.sleep(3600)


def zone(net: Net) -> None:
    net.zone.add("slow.example", "MX", "10 mx.slow.example.")
    net.zone.add("mx.slow.example", "A", "127.0.0.2")
    net.zone.add("ok-a.example", "MX", "10 mx.ok-a.example.")
    net.zone.add("mx.ok-a.example", "A", "127.0.0.3")
    net.zone.add("ok-b.example", "A", "127.0.0.4")  # implicit MX


def members(addresses: list[str]) -> dict:
    club = {a: (a.partition("@")[0].title(), ["youth"]) for a in addresses}
    club["anna@example.net"] = ("Anna", ["youth"])  # the poster; no such domain in the test DNS
    return club


def leases(cfg: Config, domain: str) -> list[float | None]:
    db = sqlite3.connect(cfg.database)
    try:
        return [u for (u,) in db.execute("SELECT lease_until FROM deliveries WHERE recipient LIKE ?", (f"%@{domain}",))]
    finally:
        db.close()


def received(*sinks: Sink) -> Counter[tuple[str, str | None]]:
    """(recipient, subject) -> how many times it arrived."""
    from email import message_from_bytes

    return Counter((r.rcpt, message_from_bytes(r.data)["Subject"]) for s in sinks for r in s.received)


async def test_a_tarpit_mx_holds_up_no_other_domain_and_nothing_goes_twice(net: Net, clock: Clock):
    release = asyncio.Event()
    zone(net)
    slow = await net.mx("127.0.0.2", protocol=tarpit(release))
    ok_a, ok_b = await net.mx("127.0.0.3"), await net.mx("127.0.0.4")
    cfg = await net.club(members=members(SLOW + HEALTHY))
    cfg = replace(cfg, relay=replace(cfg.relay, timeout=60.0))  # no wait is cut below a minute here
    async with open_runtime(cfg, clock, deliver=True, rng=random.Random(3)) as runtime:
        await _tarpit_scenario(cfg, clock, runtime, release, slow, ok_a, ok_b)


async def _tarpit_scenario(
    cfg: Config, clock: Clock, runtime: Runtime, release: asyncio.Event, slow: Sink, ok_a: Sink, ok_b: Sink
) -> None:
    worker, writer = runtime.worker, runtime.writer
    assert worker is not None
    running = asyncio.create_task(worker.run())  # as in serve: woken by ingest
    ingest = runtime.ingest(worker.wake)

    async def post(subject: str) -> None:
        replies = await ingest.decide("anna@example.net", ["youth@myclub.org"], message(subject=subject))
        assert replies[0].startswith("250")

    try:
        await post("First")
        await eventually(lambda: len(ok_a.received) + len(ok_b.received) == 4, 10, "the healthy copies")
        assert slow.received == [] and not release.is_set()  # the tarpit is still keeping its client waiting

        await post("Second")  # a new post while the slow lane waits: it does not wait behind it
        await eventually(lambda: len(ok_a.received) + len(ok_b.received) == 8, 10, "the second post's copies")

        # The worker's clock passes the lease while the slow copies are still in flight:
        # the worker renews their leases, so a flush from cron takes none of them.
        clock.advance(cfg.queue.lease + 1)
        await eventually(lambda: all(u and u > clock() for u in leases(cfg, "slow.example")), 5, "leases renewed")
        cron = Worker(cfg, writer, None, clock, random.Random(4), owner="cron.example.org:4242")
        assert await cron.flush() == {}
        await cron.close()

        release.set()  # the tarpit finally greets: the copies it was waiting for go through, once
        await eventually(lambda: len(slow.received) == 8, 10, "the slow copies")
        await eventually(lambda: all(u is None for u in leases(cfg, "slow.example")), 5, "the outcomes recorded")
    finally:
        release.set()
        await worker.stop()
        try:
            await asyncio.wait_for(running, 5)
        except TimeoutError:
            pass

    counts = received(slow, ok_a, ok_b)
    assert set(counts.values()) == {1}  # nothing twice
    assert set(counts) == {(a, s) for a in SLOW + HEALTHY for s in ("[youth] First", "[youth] Second")}
    rows = deliveries(cfg)
    assert all(rows[a]["state"] == "sent" and rows[a]["attempts"] == 1 for a in SLOW + HEALTHY)


async def test_stage_timeouts_defer_a_tarpit_quickly(net: Net, clock: Clock):
    """A host that never greets and one that never answers RCPT: each copy is deferred
    after its stage's limit, with the stage named; the healthy copies are sent."""
    zone(net)
    net.zone.add("rcpt.example", "MX", "10 mx.rcpt.example.")
    net.zone.add("mx.rcpt.example", "A", "127.0.0.5")
    never = asyncio.Event()
    await net.mx("127.0.0.2", protocol=tarpit(never))
    await net.mx("127.0.0.5", protocol=SlowRcpt)
    ok_a, ok_b = await net.mx("127.0.0.3"), await net.mx("127.0.0.4")
    await net.club(
        members=members(["a0@slow.example", "ruth@rcpt.example", *HEALTHY]),
        relay_extra="helo_timeout = 1\nmail_timeout = 1",
    )
    rows = await asyncio.wait_for(post_and_deliver(net.cfg, clock), 15)
    assert all(rows[a]["state"] == "sent" for a in HEALTHY)
    assert len(ok_a.received) + len(ok_b.received) == 4
    greeting, rcpt = rows["a0@slow.example"], rows["ruth@rcpt.example"]
    assert greeting["state"] == "pending" and greeting["attempts"] == 1
    assert greeting["last_reply"].startswith("4.4.1 mx.slow.example[127.0.0.2]")
    assert "timed out at greeting (1s)" in greeting["last_reply"]
    assert rcpt["state"] == "pending" and rcpt["attempts"] == 1
    assert rcpt["last_reply"].startswith("4.4.2 mx.rcpt.example") and "timed out at RCPT" in rcpt["last_reply"]


async def test_a_claim_skips_full_destinations_and_only_our_leases_are_renewed(net: Net, clock: Clock):
    zone(net)
    cfg = await net.club(members=members(SLOW + HEALTHY))
    async with open_runtime(cfg, clock) as runtime:
        writer = runtime.writer
        replies = await runtime.ingest().decide("anna@example.net", ["youth@myclub.org"], message())
        assert replies[0].startswith("250")
        now = clock()
        mine, _ = await writer.submit(lambda db: queue.claim(db, "me:1", now, 600, 100, skip_domains=("slow.example",)))
        assert {d.domain for d in mine} == {"example.net", "ok-a.example", "ok-b.example"}
        theirs, _ = await writer.submit(lambda db: queue.claim(db, "them:2", now, 600, 100))
        assert sorted(d.recipient for d in theirs) == SLOW
        ids = [d.id for d in mine + theirs]
        kept = await writer.submit(lambda db: outbound.renew_leases(db, "me:1", ids, now + 900))
        assert kept == {d.id for d in mine}
        assert set(leases(cfg, "ok-a.example")) == {now + 900} and set(leases(cfg, "slow.example")) == {now + 600}
