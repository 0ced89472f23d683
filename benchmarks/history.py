"""History benchmark: do the hot paths slow down as the database fills with years of mail?

Two databases of the same club: an empty one, and one holding a history (default:
100,000 posts with 1,000,000 delivered copies, the kind of history retention
keeps). On each, in this process: ingest (``IngestHandler.decide`` through the
group-commit writer, ``--sessions`` at a time, each post fanned out to the list's
members), then the worker's claim rate (claim due copies under a lease in batches
of 200 and record them sent, as the delivery worker does, without the network).
A retention pass over the history is timed too, batch by batch: its longest batch
is how long it holds the write lock. Prints the rates and the ratios.

    python benchmarks/history.py [--posts 100000] [--copies 1000000] [--ingest 2000] [--members 50]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import write_club_config  # noqa: E402
from lmtpd import retention, roster  # noqa: E402
from lmtpd.config import RetentionConfig, load  # noqa: E402
from lmtpd.runtime import open_runtime  # noqa: E402
from lmtpd.store import open_database, outbound, transaction  # noqa: E402
from lmtpd.store import retention as store_retention  # noqa: E402

DAY = 86400.0
RAW = b"From: m00@example.net\r\nTo: members@myclub.org\r\nSubject: history\r\n\r\n" + b"x" * 2000 + b"\r\n"


async def make_club(config: Path, members: int) -> None:
    cfg = load(config)
    db = await open_database(cfg.database)

    async def fill(db):
        await roster.add_list(db, "members", 0)
        for i in range(members):
            await roster.add_member(db, f"m{i:02d}@example.net", f"Member {i}", ["members"], 0, cfg.domain)

    await transaction(db, fill)
    await db.close()


def add_history(path: Path, posts: int, copies: int, now: float) -> None:
    """``posts`` old posts with ``copies`` sent copies between them, spread over the last 80 days."""
    per_post = max(1, copies // posts)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    db.execute(
        """WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
           INSERT INTO messages (id, queue_id, mail_from, author, subject, size, raw, arrived_at)
           SELECT 1000000 + i, printf('H%011d', i), 'm00@example.net', 'm00@example.net', 'history', ?, ?,
                  ? - 80 * 86400 + i * (80 * 86400.0 / ?) FROM n""",
        (posts, len(RAW), RAW, now, posts),
    )
    db.execute(
        """INSERT INTO posts (id, message_id, list_id, list_name, sender, accepted_at, headers)
           SELECT id, id, 1, 'members', 'members-bounces@myclub.org', arrived_at, x'00' FROM messages
            WHERE id >= 1000000"""
    )
    db.execute(
        """WITH RECURSIVE k(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM k WHERE j < ? - 1)
           INSERT INTO deliveries (post_id, recipient, state, attempts, created_at, next_attempt_at,
                                   last_attempt_at, last_reply, status)
           SELECT p.id, printf('h%d@example.org', k.j), 'sent', 1, p.accepted_at, p.accepted_at + 5,
                  p.accepted_at + 5, '250 2.0.0 Ok', '2.0.0'
             FROM posts p, k WHERE p.id >= 1000000""",
        (per_post,),
    )
    db.execute("COMMIT")
    db.execute("ANALYZE")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # a history is in the file, not in a 60 MB WAL
    db.close()


async def ingest_rate(cfg, count: int, sessions: int, clock) -> float:
    async with open_runtime(cfg, clock) as runtime:
        handler = runtime.ingest()
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(count):
            queue.put_nowait(i)

        async def session() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                raw = RAW.replace(b"Subject: history", f"Subject: new {i}".encode())
                replies = await handler.decide("m00@example.net", ["members@myclub.org"], raw)
                assert replies[0].startswith("250"), replies

        start = time.perf_counter()
        await asyncio.gather(*(session() for _ in range(sessions)))
        return count / (time.perf_counter() - start)


async def claim_rate(cfg, clock) -> tuple[float, int]:
    """Claim every due copy in batches of 200 and record each sent; copies per second."""
    async with open_runtime(cfg, clock, ingest=False) as runtime:
        done = 0
        start = time.perf_counter()
        for _ in range(100000):
            now = clock()
            rows, _posts = await runtime.writer.submit(lambda db, now=now: outbound.claim(db, "bench:1", now, 600, 200))
            if not rows:
                break
            outcomes = [("sent", now, now, "250 2.0.0 Ok", "sink", "none", "2.0.0", r[0]) for r in rows]
            await runtime.writer.submit(lambda db, o=outcomes: outbound.record_attempts(db, o))
            done += len(rows)
        return done / (time.perf_counter() - start), done


async def prune_pass(cfg, clock) -> tuple[float, float, int]:
    """A retention pass over the history: seconds in all, the longest batch on the event loop
    (what an LMTP session can wait for; the COMMIT runs in the writer's thread), rows deleted."""
    r = RetentionConfig(copies_days=30, posts_days=60, bounces_days=180, batch=100)
    cut = retention.cutoffs(r, clock())
    longest = 0.0
    total = 0
    start = time.perf_counter()
    async with open_runtime(cfg, clock, ingest=False) as runtime:
        for job, before in ((store_retention.prune_copies, cut.copies), (store_retention.prune_posts, cut.posts)):
            for _ in range(1_000_000):
                n, took = await runtime.writer.submit(lambda db, j=job, b=before: timed(db, j, b))
                longest = max(longest, took)
                total += n
                if n < 100:
                    break
    return time.perf_counter() - start, longest, total


def timed(db: sqlite3.Connection, job, before: float) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = retention.run_batch(db, job, before, 100)
    return n, time.perf_counter() - t0


def db_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 1e6


async def run(work: Path, name: str, args: argparse.Namespace) -> dict[str, float]:
    config = write_club_config(work / name, 1, relay="deliver = false", limits="posts_per_day = 1000000000")
    cfg = load(config)
    await make_club(config, args.members)
    now = time.time()
    if name == "history":
        t0 = time.perf_counter()
        add_history(cfg.database, args.posts, args.copies, now)
        print(f"  history of {args.posts} posts, {args.copies} copies written in {time.perf_counter() - t0:.1f} s")
    out = {"size": db_mb(cfg.database)}
    out["ingest"] = await ingest_rate(cfg, args.ingest, args.sessions, time.time)
    out["claim"], claimed = await claim_rate(cfg, time.time)
    print(f"  {name}: {out['size']:.0f} MB, ingest {out['ingest']:.0f} posts/s, claim {out['claim']:.0f} copies/s")
    if name == "history":
        seconds, longest, deleted = await prune_pass(cfg, lambda: now + 1)
        out["prune_longest_ms"] = longest * 1000
        print(
            f"  retention pass: {deleted} rows in {seconds:.1f} s, longest batch {longest * 1000:.1f} ms,"
            f" file {db_mb(cfg.database):.0f} MB"
        )
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=100_000)
    parser.add_argument("--copies", type=int, default=1_000_000)
    parser.add_argument("--ingest", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--members", type=int, default=50)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmtpd-history-"))
    try:
        empty = await run(work, "empty", args)
        history = await run(work, "history", args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ingest, claim = history["ingest"] / empty["ingest"], history["claim"] / empty["claim"]
    print(f"history/empty: ingest {ingest:.2f}, claim {claim:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
