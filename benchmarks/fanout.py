"""Fan-out benchmark: one post to a 1,000- and a 10,000-member list.

Measures the time from lmtpd's LMTP 250 until the last copy is accepted by Postfix's
smtp-sink on 127.0.0.1, next to a raw aiosmtplib loop that sends the same number of
transactions of the same size over the same number of connections, and prints
deliveries per second for both, their ratio, and the peak memory of ``lmtpd serve``
and of its delivery worker process.

    python benchmarks/fanout.py [--sizes 1000 10000] [--connections 10]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    lmtp_send,
    peak_rss_mb,
    start_serve,
    start_smtp_sink,
    stop,
    wait_for_worker,
    write_club_config,
)
from lmtpd.config import load  # noqa: E402
from lmtpd.store import open_database  # noqa: E402

LIMIT_SECONDS = 600


def body(size: int) -> bytes:
    head = (
        "From: Member Zero <m00000@example.net>\r\nTo: big@myclub.org\r\nSubject: fan-out\r\n"
        "Message-ID: <fanout@example.net>\r\n\r\n"
    )
    line = "x" * 76 + "\r\n"
    return (head + line * max(1, (size - len(head)) // len(line))).encode()


async def make_club(config: Path, members: int) -> None:
    cfg = load(config)
    db = await open_database(cfg.database)  # creates the schema
    await db.close()
    conn = sqlite3.connect(cfg.database)
    with conn:
        conn.execute("INSERT INTO lists (name, description, posters, created_at) VALUES ('big', '', 'club', 0)")
        conn.executemany(
            "INSERT INTO members (address, name, created_at) VALUES (?, '', 0)",
            [(f"m{i:05d}@example.net",) for i in range(members)],
        )
        conn.execute("INSERT INTO memberships SELECT l.id, m.id FROM lists l, members m")
    conn.close()


async def run_lmtpd(work: Path, members: int, sink_port: int, args) -> tuple[float, tuple[float, float]]:
    folder = work / f"club{members}"
    config = write_club_config(
        folder, sink_port, lmtp="max_message_size = 1048576", relay=f"connections = {args.connections}\nbatch = 500"
    )
    await make_club(config, members)
    proc = start_serve(config, folder / "serve.log")
    try:
        deadline = time.monotonic() + 30
        while not (folder / "lmtpd.sock").exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("lmtpd serve did not start")
            await asyncio.sleep(0.05)
        worker = wait_for_worker(folder / "serve.log", proc)
        replies = await lmtp_send(folder / "lmtpd.sock", "m00000@example.net", ["big@myclub.org"], body(args.size))
        start = time.monotonic()
        if not replies or not replies[0].startswith("250"):
            raise SystemExit(f"lmtpd did not accept the post: {replies}")
        db = sqlite3.connect(folder / "club.sqlite3")
        while True:
            left = db.execute("SELECT count(*) FROM deliveries WHERE state != 'sent'").fetchone()[0]
            if left == 0:
                break
            if time.monotonic() - start > LIMIT_SECONDS:
                raise SystemExit(f"{left} copies still queued after {LIMIT_SECONDS} s")
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - start
        db.close()
        peak = (peak_rss_mb(proc.pid), peak_rss_mb(worker))
    finally:
        stop(proc)
    return elapsed, peak


async def raw_loop(members: int, sink_port: int, args) -> float:
    """The same transactions, straight from aiosmtplib, nothing stored."""
    data = body(args.size)
    todo = list(range(members))

    async def lane() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=sink_port, start_tls=False)
        await smtp.connect()
        while todo:
            i = todo.pop()
            await smtp.sendmail("big-bounces@myclub.org", [f"m{i:05d}@example.net"], data)
        await smtp.quit()

    start = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(lane() for _ in range(args.connections))), LIMIT_SECONDS)
    return time.monotonic() - start


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--size", type=int, default=5120, help="message size in bytes")
    args = parser.parse_args()
    if not shutil.which("smtp-sink"):
        raise SystemExit("smtp-sink not found: apt-get install postfix")
    work = Path(tempfile.mkdtemp(prefix="lmfanout", dir="/tmp"))
    sink, port = start_smtp_sink()
    try:
        await asyncio.sleep(0.3)
        print(f"one post of {args.size} bytes, {args.connections} SMTP connections to smtp-sink")
        for members in args.sizes:
            elapsed, peak = await run_lmtpd(work, members, port, args)
            raw = await raw_loop(members, port, args)
            print(
                f"{members:6d} members: lmtpd {members / elapsed:8.1f} copies/s ({elapsed:6.2f} s, "
                f"peak RSS {peak[0]:4.1f} MB serve + {peak[1]:4.1f} MB worker)  "
                f"raw aiosmtplib {members / raw:8.1f}/s ({raw:6.2f} s)  "
                f"ratio {raw / elapsed:.2f}"
            )
    finally:
        stop(sink)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
