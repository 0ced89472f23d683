"""Policy service benchmark: 10,000 requests over 10 connections to ``lmtpd serve``.

Each connection sends its requests one after another, as a Postfix smtpd process
does; a mix of members, strangers and unknown lists. Prints requests per second and
the median and 99th percentile latency.

    python benchmarks/policy.py [--requests 10000] [--connections 10]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import start_serve, stop, write_club_config  # noqa: E402
from lmtpd import roster  # noqa: E402
from lmtpd.config import load  # noqa: E402
from lmtpd.store import open_database, transaction  # noqa: E402

LIMIT_SECONDS = 300


def request(sender: str, recipient: str) -> bytes:
    attrs = {
        "request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
        "client_address": "192.0.2.10", "client_name": "mail.example.net", "helo_name": "mail.example.net",
        "sender": sender, "recipient": recipient, "queue_id": "", "instance": "1.2.3", "size": "5000",
        "encryption_protocol": "TLSv1.3",
    }  # fmt: skip
    return "".join(f"{k}={v}\n" for k, v in attrs.items()).encode() + b"\n"


async def make_club(config: Path) -> None:
    cfg = load(config)
    db = await open_database(cfg.database)

    async def fill(db):
        await roster.add_list(db, "youth", 0)
        for i in range(200):
            await roster.add_member(db, f"m{i:03d}@example.net", "", ["youth"], 0, cfg.domain)

    await transaction(db, fill)
    await db.close()


async def client(path: Path, count: int, offset: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_unix_connection(str(path))
    for i in range(count):
        n = offset + i
        sender = f"m{n % 200:03d}@example.net" if n % 3 else f"stranger{n}@example.org"
        recipient = "youth@myclub.org" if n % 10 else "chess@myclub.org"
        start = time.perf_counter()
        writer.write(request(sender, recipient))
        answer = await reader.readuntil(b"\n\n")
        latencies.append(time.perf_counter() - start)
        assert answer.startswith(b"action=")
    writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--connections", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmpolicy", dir="/tmp"))
    config = write_club_config(work, 1, lmtp="", relay="deliver = false", limits="posts_per_day = 1000")
    text = config.read_text().replace("[lmtp]", f'[policy]\nlisten = "unix:{work}/policy.sock"\n\n[lmtp]', 1)
    config.write_text(text)
    await make_club(config)
    proc = start_serve(config, work / "serve.log")
    try:
        for _ in range(300):
            if (work / "policy.sock").exists():
                break
            await asyncio.sleep(0.05)
        latencies: list[float] = []
        per = args.requests // args.connections
        start = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(*(client(work / "policy.sock", per, c * per, latencies) for c in range(args.connections))),
            LIMIT_SECONDS,
        )
        elapsed = time.perf_counter() - start
    finally:
        stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"{len(latencies)} policy requests over {args.connections} connections in {elapsed:.2f} s: "
          f"{len(latencies) / elapsed:.0f} requests/s, median {statistics.median(latencies) * 1000:.2f} ms, "
          f"p99 {p99 * 1000:.2f} ms")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
