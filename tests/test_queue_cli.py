"""`lmtpd queue list` and `lmtpd queue flush` on a populated queue, as processes."""

from __future__ import annotations

import asyncio
import json

from lmtpd.config import load
from lmtpd.ingest import IngestHandler
from lmtpd.store import Writer, connect_sync, open_database

from .conftest import Clock, Sink, message, populate, spawn_lmtpd, write_config


async def lmtpd(config, *args: str) -> tuple[int, str, str]:
    proc = await spawn_lmtpd(config, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def queue_a_post(config) -> None:
    cfg = load(config)
    await populate(cfg)
    db = await open_database(cfg.database)
    writer = Writer(cfg.database)
    await writer.start()
    replies = await IngestHandler(cfg, writer, connect_sync(cfg.database), Clock()).decide(
        "anna@example.net", ["youth@myclub.org"], message()
    )
    assert replies[0].startswith("250")
    await writer.stop()
    await db.close()


async def test_queue_list_and_flush_against_an_unreachable_relay(tmp_path):
    config = write_config(tmp_path, "127.0.0.1:8024", relay_port=1)
    await queue_a_post(config)

    code, out, _ = await lmtpd(config, "queue", "list")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 3
    queue_id = lines[0].split()[0]
    assert all(line.split()[0] == queue_id for line in lines)
    assert "anna@example.net  pending  attempts=0" in out

    code, out, err = await lmtpd(config, "queue", "flush")
    assert code == 75, (out, err)
    assert "attempted 3: 0 sent, 3 deferred, 0 failed" in out
    assert err.strip() == "lmtpd: relay 127.0.0.1:1 unreachable for 3 copies"

    code, out, _ = await lmtpd(config, "queue", "list", "--json")
    entries = json.loads(out)
    assert {e["recipient"] for e in entries} == {"anna@example.net", "bob@example.net", "carla@example.com"}
    for e in entries:
        assert set(e) == {
            "queue_id",
            "delivery_id",
            "list",
            "recipient",
            "state",
            "attempts",
            "next_attempt",
            "last_reply",
            "arrived",
        }
        assert e["state"] == "pending" and e["attempts"] == 1 and e["list"] == "youth"
        assert e["last_reply"].startswith("4.4.1 127.0.0.1[127.0.0.1]:1")
        assert e["next_attempt"].endswith("Z")


async def test_flush_delivers_deferred_copies_now(tmp_path, sink: Sink):
    config = write_config(tmp_path, "127.0.0.1:8024", relay_port=sink.port)
    await queue_a_post(config)
    sink.rcpt_replies = {"carla@example.com": "550 5.1.1 unknown user"}
    code, out, err = await lmtpd(config, "queue", "flush")
    assert code == 0, err
    # the failure completes the post, which queues a report that the same flush sends
    assert "attempted 4: 3 sent, 0 deferred, 1 failed" in out
    reports = [r for r in sink.received if r.rcpt == "admin@myclub.org"]
    assert len(reports) == 1 and reports[0].mail_from == "<>"
    assert b"Final-Recipient: rfc822; carla@example.com" in reports[0].data
    code, out, _ = await lmtpd(config, "queue", "list", "--json")
    entries = json.loads(out)
    assert [(e["recipient"], e["state"], e["last_reply"]) for e in entries] == [
        ("carla@example.com", "failed", "550 5.1.1 unknown user")
    ]
    code, out, _ = await lmtpd(config, "queue", "flush")
    assert "attempted 0" in out and code == 0
