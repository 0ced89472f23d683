"""`lmtpd queue list` and `lmtpd queue flush` on a populated queue, as processes."""

from __future__ import annotations

import asyncio
import json
import time

from lmtpd.config import load
from lmtpd.runtime import open_runtime

from .helpers.club import message, populate, write_config
from .helpers.processes import spawn_lmtpd
from .helpers.sink import Sink
from .helpers.timing import Clock


async def lmtpd(config, *args: str) -> tuple[int, str, str]:
    proc = await spawn_lmtpd(config, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def queue_a_post(config, subject: str = "Training on Saturday", first: bool = True) -> str:
    """Post to youth through the ingest code, as now; return the queue id."""
    cfg = load(config)
    if first:
        await populate(cfg)
    async with open_runtime(cfg, Clock(time.time())) as runtime:
        replies = await runtime.ingest().decide("anna@example.net", ["youth@myclub.org"], message(subject=subject))
    assert replies[0].startswith("250")
    return replies[0].split()[3]


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
            "queue_id", "delivery_id", "list", "recipient", "state", "attempts", "next_attempt",
            "last_attempt", "last_reply", "status", "remote_mta", "tls", "arrived",
        }  # fmt: skip
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


async def test_every_queue_command_on_a_populated_queue(tmp_path, sink: Sink):
    config = write_config(tmp_path, "127.0.0.1:8024", relay_port=sink.port)
    q1 = await queue_a_post(config, "first")
    q2 = await queue_a_post(config, "second", first=False)
    sink.rcpt_replies = {"carla@example.com": "550 5.1.1 unknown user", "bob@example.net": "451 4.2.0 busy"}

    code, out, _ = await lmtpd(config, "queue", "flush", q1.lower())  # ids are case-insensitive
    assert code == 0 and "attempted 3: 1 sent, 1 deferred, 1 failed" in out
    assert {r.rcpt for r in sink.received} == {"anna@example.net"}

    code, out, _ = await lmtpd(config, "queue", "list", "--json")
    listed = {(e["queue_id"], e["recipient"]): e for e in json.loads(out)}
    # q1: bob pending, carla failed; q2: three pending; carla's failure reported at once (its own queue id)
    assert len(listed) == 6
    assert [k[1] for k in listed if k[0] not in (q1, q2)] == ["admin@myclub.org"]
    assert listed[(q1, "carla@example.com")]["state"] == "failed"
    assert listed[(q1, "carla@example.com")]["status"] == "5.1.1"
    assert listed[(q1, "bob@example.net")]["next_attempt"]
    assert listed[(q1, "bob@example.net")]["remote_mta"] == "127.0.0.1"
    assert listed[(q1, "bob@example.net")]["tls"] == "none"
    code, out, _ = await lmtpd(config, "queue", "list", "--state", "failed", "--json")
    assert [(e["queue_id"], e["recipient"]) for e in json.loads(out)] == [(q1, "carla@example.com")]
    code, out, _ = await lmtpd(config, "queue", "list", "--state", "all", "--list", "youth", "--json")
    assert len(json.loads(out)) == 7  # and the report about youth's post
    code, out, _ = await lmtpd(config, "queue", "list", "--list", "trainers")
    assert out.strip() == "queue is empty"

    code, out, _ = await lmtpd(config, "queue", "show", q1, "--json")
    shown = json.loads(out)
    assert shown["queue_id"] == q1 and shown["lists"] == ["youth"] and shown["mail_from"] == "anna@example.net"
    assert shown["senders"] == ["youth-bounces@myclub.org"]
    assert {d["recipient"]: d["state"] for d in shown["deliveries"]} == {
        "anna@example.net": "sent", "bob@example.net": "pending", "carla@example.com": "failed",
    }  # fmt: skip
    assert "Subject: first" in shown["headers"]
    code, out, _ = await lmtpd(config, "queue", "show", q1)
    assert code == 0 and "copies:" in out and "550 5.1.1 unknown user" in out and "Subject: first" in out

    code, out, _ = await lmtpd(config, "queue", "hold", q2)
    assert out.strip() == f"{q2}: 3 copies held"
    code, out, _ = await lmtpd(config, "queue", "flush")
    assert "attempted 2: 1 sent, 1 deferred" in out  # bob's copy of q1 and the report; q2 is held
    code, out, _ = await lmtpd(config, "queue", "list", "--state", "held", "--json")
    assert {e["queue_id"] for e in json.loads(out)} == {q2} and len(json.loads(out)) == 3
    code, out, _ = await lmtpd(config, "queue", "release", q2)
    assert out.strip() == f"{q2}: 3 copies released"

    code, out, _ = await lmtpd(config, "queue", "stats", "--json")
    stats = json.loads(out)
    assert stats["states"] == {"pending": 4, "held": 0, "failed": 1, "sent": 2}  # anna's copy, the report
    assert stats["destinations"] == {"example.net": 3, "example.com": 1}
    assert stats["oldest_age_seconds"] >= 0
    code, out, _ = await lmtpd(config, "queue", "stats")
    assert "pending=4" in out and "example.net  3" in out

    code, _, err = await lmtpd(config, "queue", "retry")
    assert code == 64 and "give a queue id or --all-failed" in err
    code, out, _ = await lmtpd(config, "queue", "retry", q1)
    assert out.strip() == "1 failed copies queued again"
    code, out, _ = await lmtpd(config, "queue", "retry", "--all-failed")
    assert out.strip() == "0 failed copies queued again"

    proc = await spawn_lmtpd(
        config, "queue", "delete", q2,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate(b"n\n")
    assert proc.returncode == 1 and b"Delete" in out and b"3 copies not yet sent" in out
    code, out, _ = await lmtpd(config, "queue", "delete", q2, "--yes")
    assert code == 0 and out.strip() == f"{q2}: deleted with 3 copies"
    code, _, err = await lmtpd(config, "queue", "show", q2)
    assert code == 66 and f"no message with queue id {q2}" in err
