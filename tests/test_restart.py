"""Crash safety: kill -9 after the 250, before delivery finished; a new serve delivers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import sys

from lmtpd import supervise

from .helpers import lmtpclient
from .helpers.club import lmtp_target, message, new_club
from .helpers.processes import alive, children, start_serve
from .helpers.sink import Sink
from .helpers.timing import eventually

YOUTH = {"anna@example.net", "bob@example.net", "carla@example.com"}


def states(cfg) -> list[str]:
    db = sqlite3.connect(cfg.database)
    try:
        return [s for (s,) in db.execute("SELECT state FROM deliveries ORDER BY id")]
    finally:
        db.close()


async def test_kill_9_after_250_loses_nothing(short_dir, sink: Sink):
    cfg = await new_club(short_dir, relay_port=sink.port)
    config = cfg.source
    sink.hold = asyncio.Event()  # the far end takes the copies but never answers

    proc = await start_serve(config)
    t = await lmtpclient.send(lmtp_target(cfg), "anna@example.net", ["youth@myclub.org"], message())
    assert t.data[0].startswith("250")
    await eventually(lambda: sink.data_started >= 1, what="the worker to start relaying")
    proc.send_signal(signal.SIGKILL)
    await proc.wait()

    db = sqlite3.connect(cfg.database)
    pending = db.execute("SELECT count(*) FROM deliveries WHERE state = 'pending'").fetchone()[0]
    leased = db.execute("SELECT count(*) FROM deliveries WHERE lease_owner IS NOT NULL").fetchone()[0]
    db.close()
    assert pending == 3 and leased >= 1  # acknowledged, claimed, not yet delivered

    sink.hold.set()  # the far end recovers; whatever it had received counts as delivered
    sink.hold = None
    proc = await start_serve(config)  # the socket left by the killed process is replaced
    try:
        await eventually(lambda: {r.rcpt for r in sink.received} >= YOUTH, what="redelivery")
        await eventually(lambda: states(cfg) == ["sent"] * 3, what="queue to empty")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert not cfg.lmtp.listen.path.exists()  # removed on a clean shutdown
    duplicates = len(sink.received) - len(YOUTH)
    print(f"copies received: {len(sink.received)} for {len(YOUTH)} members ({duplicates} duplicates)")


async def test_sigterm_finishes_a_session_inside_a_transaction(short_dir, sink: Sink):
    cfg = await new_club(short_dir, relay_port=sink.port)
    config = cfg.source
    proc = await start_serve(config)
    reader, writer = await lmtpclient.connect(lmtp_target(cfg))
    await lmtpclient.read_reply(reader)
    writer.write(b"LHLO c.example.org\r\nMAIL FROM:<anna@example.net>\r\nRCPT TO:<youth@myclub.org>\r\n")
    for _ in range(3):
        await lmtpclient.read_reply(reader)
    # an idle cached connection is closed politely at shutdown
    idle_reader, idle_writer = await lmtpclient.connect(lmtp_target(cfg))
    await lmtpclient.read_reply(idle_reader)
    proc.send_signal(signal.SIGTERM)
    assert (await lmtpclient.read_reply(idle_reader))[0].startswith("421 4.3.2")
    writer.write(b"DATA\r\n")
    assert (await lmtpclient.read_reply(reader))[0].startswith("354")
    writer.write(lmtpclient.dot_stuff(message()))
    assert (await lmtpclient.read_reply(reader))[0].startswith("250")
    writer.close()
    idle_writer.close()
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    db = sqlite3.connect(cfg.database)
    assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
    db.close()


async def test_delivery_runs_in_its_own_process_and_is_restarted(short_dir, sink: Sink):
    cfg = await new_club(short_dir, relay_port=sink.port)
    config = cfg.source
    proc = await start_serve(config)
    try:
        await eventually(lambda: len(children(proc.pid)) == 1, what="the delivery worker to start")
        (worker,) = children(proc.pid)
        lower = min(os.getpriority(os.PRIO_PROCESS, proc.pid) + 10, 19)  # relaying yields the CPU to LMTP sessions
        await eventually(lambda: os.getpriority(os.PRIO_PROCESS, worker) == lower, what="a lower priority")
        os.kill(worker, signal.SIGKILL)
        # accepted while no worker runs: the next one (after a pause) delivers it
        t = await lmtpclient.send(lmtp_target(cfg), "anna@example.net", ["youth@myclub.org"], message())
        assert t.data[0].startswith("250")
        await eventually(lambda: {r.rcpt for r in sink.received} == YOUTH, what="delivery by a new worker")
        assert children(proc.pid) != [worker]
        assert "exited with status -9; starting it again" in (short_dir / "serve.log").read_text()

        # killed while it holds copies under lease: the next worker takes them back
        (worker,) = children(proc.pid)
        sink.hold = asyncio.Event()
        started = sink.data_started
        second = message(subject="second post")
        t = await lmtpclient.send(lmtp_target(cfg), "anna@example.net", ["youth@myclub.org"], second)
        assert t.data[0].startswith("250")
        await eventually(lambda: sink.data_started > started, what="the worker to start relaying")
        os.kill(worker, signal.SIGKILL)
        db = sqlite3.connect(cfg.database)
        owner = f"{socket.gethostname()}:{worker}"
        assert db.execute("SELECT count(*) FROM deliveries WHERE lease_owner = ?", (owner,)).fetchone()[0] >= 1
        db.close()
        sink.hold.set()
        sink.hold = None
        # what the sink got before the kill counts as received, but only a new worker records it
        await eventually(lambda: states(cfg) == ["sent"] * 6, what="the next worker to send and record")
        assert {r.rcpt for r in sink.received if b"second post" in r.data} == YOUTH
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_the_delivery_worker_ends_with_a_killed_serve(short_dir, sink: Sink):
    cfg = await new_club(short_dir, relay_port=sink.port)
    config = cfg.source
    proc = await start_serve(config)
    await eventually(lambda: len(children(proc.pid)) == 1, what="the delivery worker to start")
    (worker,) = children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    await eventually(lambda: not alive(worker), what="the orphaned worker to stop")


CHILD = """
import sys
with open(sys.argv[1], "a") as log:
    log.write("start\\n")
    log.flush()
    for line in sys.stdin:
        log.write("wake\\n")
        log.flush()
    log.write("end of pipe\\n")
sys.exit(int(sys.argv[2]))
"""


def lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_delivery_process_is_woken_stopped_and_restarted(short_dir, monkeypatch):
    """The pipe protocol and the supervision, with a stand-in child that logs what it sees."""
    monkeypatch.setattr(supervise, "RESTART_DELAYS", (0.05, 0.1))
    seen = short_dir / "child.log"
    proc = supervise.DeliveryProcess([sys.executable, "-c", CHILD, str(seen), "0"], grace=2)
    await proc.start()
    await eventually(lambda: lines(seen) == ["start"])
    proc.wake()
    await eventually(lambda: lines(seen) == ["start", "wake"])
    proc.proc.stdin.close()  # as if it ended on its own: started again
    await eventually(lambda: lines(seen) == ["start", "wake", "end of pipe", "start"])
    proc.wake()
    await eventually(lambda: lines(seen)[-1] == "wake")
    await proc.stop()
    assert proc.proc.returncode == 0
    assert lines(seen)[-1] == "end of pipe"


async def test_a_worker_that_keeps_failing_is_retried_with_pauses(short_dir, monkeypatch):
    monkeypatch.setattr(supervise, "RESTART_DELAYS", (0.05, 0.1))
    seen = short_dir / "child.log"
    proc = supervise.DeliveryProcess([sys.executable, "-c", CHILD.replace("sys.stdin", "[]"), str(seen), "3"], grace=2)
    await proc.start()
    await eventually(lambda: lines(seen).count("start") >= 3, what="three starts")
    await proc.stop()
    starts = lines(seen).count("start")
    await asyncio.sleep(0.3)
    assert lines(seen).count("start") == starts  # stopped for good
