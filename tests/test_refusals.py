"""Direct MX mode: a member's server refusing a copy during the session is read and scored as a bounce."""

from __future__ import annotations

import sqlite3

from lmtpd import bounces
from lmtpd.runtime import open_runtime

from .helpers.mx import Net
from .helpers.timing import Clock


async def test_synchronous_refusals_are_classified_and_only_dead_addresses_scored(net: Net, clock: Clock):
    members = {f"{name}@one.example": (name, ["youth"]) for name in ("ok", "gone", "listed", "busy")}
    members["anna@example.net"] = ("Anna", ["youth"])
    net.zone.add("one.example", "MX", "10 mx.one.example.")
    net.zone.add("mx.one.example", "A", "127.0.0.2")
    sink = await net.mx("127.0.0.2")
    sink.rcpt_replies = {
        "gone@one.example": "550 5.1.1 <gone@one.example>: Recipient address rejected: User unknown",
        "listed@one.example": "550 5.7.1 Service unavailable; client [192.0.2.1] listed at zen.spamhaus.org",
        "busy@one.example": "451 4.2.1 mailbox busy",
    }
    cfg = await net.club(members=members)
    rows = await net.post_and_deliver(clock)
    assert rows["gone@one.example"]["state"] == "failed" and rows["listed@one.example"]["state"] == "failed"

    async with open_runtime(cfg, clock, ingest=False) as runtime:
        report = await bounces.process(runtime.writer.submit, cfg, clock.now)
    # busy is still queued: no bounce yet; anna's domain is not in the zone: lmtpd's own 5.1.2
    assert report.counts == {"permanent": 2, "policy": 1}
    db = sqlite3.connect(cfg.database)
    db.row_factory = sqlite3.Row
    try:
        got = {r["address"]: r for r in db.execute("SELECT * FROM bounces")}
        assert (got["gone@one.example"]["reason"], got["gone@one.example"]["counted"]) == ("userunknown", 1)
        assert (got["listed@one.example"]["reason"], got["listed@one.example"]["counted"]) == ("blocked", 0)
        assert got["anna@example.net"]["reason"] == "hostunknown"
        assert got["gone@one.example"]["list_name"] == "youth"
        assert "mx.one.example" in bytes(got["gone@one.example"]["raw"]).decode()
        scores = dict(db.execute("SELECT address, bounce_score FROM members").fetchall())
        assert scores["gone@one.example"] == 1 and scores["listed@one.example"] == 0 and scores["ok@one.example"] == 0
    finally:
        db.close()
