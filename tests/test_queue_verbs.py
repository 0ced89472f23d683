"""postqueue/postsuper-grade verbs: `queue list --messages`, `queue show --body`, and
hold/release/delete of ALL, by list and by destination, as processes on a real queue."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from lmtpd.config import load
from lmtpd.runtime import open_runtime

from .helpers.club import message, populate, write_config
from .helpers.processes import spawn_lmtpd
from .helpers.timing import Clock


async def lmtpd(config: Path, *args: str, answer: bytes | None = None) -> tuple[int, str, str]:
    pipe = asyncio.subprocess.PIPE
    proc = await spawn_lmtpd(config, *args, stdin=pipe if answer is not None else None, stdout=pipe, stderr=pipe)
    out, err = await asyncio.wait_for(proc.communicate(answer), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def post(config: Path, to: str, subject: str, body: str = "See you at 10.\r\n") -> str:
    """A post through the ingest code; its queue id."""
    cfg = load(config)
    async with open_runtime(cfg, Clock(time.time())) as runtime:
        replies = await runtime.ingest().decide("anna@example.net", [to], message(subject=subject, body=body))
    assert replies[0].startswith("250"), replies
    return replies[0].split()[3]


async def test_list_show_body_and_bulk_verbs(tmp_path: Path):
    config = write_config(tmp_path, "127.0.0.1:8024", relay_port=1)  # nothing listens there: copies defer
    await populate(load(config))
    q1 = await post(config, "youth@myclub.org", "Training on Saturday", "Bring boots.\r\n")  # anna, bob, carla
    q2 = await post(config, "trainers@myclub.org", "Coaches meeting")  # anna, carla
    code, _, _ = await lmtpd(config, "queue", "flush")
    assert code == 75

    code, out, _ = await lmtpd(config, "queue", "list", "--messages", "--json")
    assert code == 0
    listed = {m["queue_id"]: m for m in json.loads(out)}
    assert set(listed) == {q1, q2}
    m1 = listed[q1]
    assert m1["sender"] == "anna@example.net" and m1["lists"] == ["youth"] and m1["subject"] == "Training on Saturday"
    assert m1["copies"] == 3 and m1["states"] == {"pending": 3} and m1["attempts"] == 1
    assert "127.0.0.1:1" in m1["last_error"] or "connect" in m1["last_error"].lower(), m1["last_error"]
    assert 0 <= m1["age_seconds"] < 120
    code, out, _ = await lmtpd(config, "queue", "list", "--messages")
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == [q1, q2]  # one line per message, oldest first
    assert "attempts=1  <anna@example.net>  youth  pending=3  Training on Saturday" in lines[0]
    code, out, _ = await lmtpd(config, "queue", "list", "--destination", "example.com", "--json")
    assert {m["queue_id"]: m["copies"] for m in json.loads(out)} == {q1: 1, q2: 1}  # carla's copies only

    code, out, _ = await lmtpd(config, "queue", "show", q1, "--body")
    assert code == 0 and "Subject: Training on Saturday\n" in out and out.endswith("\nBring boots.\n")

    code, out, _ = await lmtpd(config, "queue", "hold", "ALL", "--destination", "example.com")
    assert out.strip() == "all messages, destination example.com: 2 copies held"
    code, out, _ = await lmtpd(config, "queue", "list", "--state", "held", "--json")
    assert {e["recipient"] for e in json.loads(out)} == {"carla@example.com"} and len(json.loads(out)) == 2
    code, out, _ = await lmtpd(config, "queue", "release", "--list", "trainers")
    assert out.strip() == "all messages, list trainers: 1 copies released"
    code, out, _ = await lmtpd(config, "queue", "hold", "all")
    assert out.strip() == "all messages: 4 copies held"  # carla's youth copy was held already
    code, out, _ = await lmtpd(config, "queue", "release", "ALL")
    assert out.strip() == "all messages: 5 copies released"

    code, _, err = await lmtpd(config, "queue", "hold")
    assert code != 0 and "name a queue id, ALL, --list or --destination" in err
    code, out, _ = await lmtpd(config, "queue", "delete", "ALL", answer=b"n\n")
    assert code == 1 and "Delete 5 copies not yet sent (all messages)?" in out
    code, out, _ = await lmtpd(config, "queue", "delete", "--list", "youth", "--destination", "example.net", "--yes")
    assert code == 0 and out.strip() == "all messages, list youth, destination example.net: 2 unsent copies deleted"
    code, out, _ = await lmtpd(config, "queue", "stats", "--json")
    assert json.loads(out)["states"]["pending"] == 3  # carla's youth copy, anna's and carla's trainers copies
    code, out, _ = await lmtpd(config, "queue", "delete", "ALL", "--yes")
    assert out.strip() == "all messages: 3 unsent copies deleted"
    code, out, _ = await lmtpd(config, "queue", "list", "--messages")
    assert out.strip() == "queue is empty"
