"""Bounce processing benchmark: how many stored bounces ``lmtpd bounces process`` gets through a second.

Stores N bounces (the reports of tests/data/bounces, addressed by VERP to members of
a club, in turn), then processes them as ``bounces process`` does: one transaction,
so one fsync, per bounce. Prints the rate of reading alone (the pure function) and of
processing (reading, attributing, scoring, committing).

    python benchmarks/bounces.py [--bounces 2000] [--members 200]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REPO, write_club_config  # noqa: E402
from lmtpd import bounces, roster  # noqa: E402
from lmtpd.config import load  # noqa: E402
from lmtpd.runtime import open_runtime  # noqa: E402
from lmtpd.store import bounces as stored  # noqa: E402
from lmtpd.store import open_database, transaction  # noqa: E402

CORPUS = REPO / "tests" / "data" / "bounces"


def reports() -> list[bytes]:
    return [p.read_bytes() for p in sorted(CORPUS.glob("*.eml"))]


async def run(work: Path, n: int, members: int) -> None:
    cfg = load(write_club_config(work, 25))
    raws = reports()
    db = await open_database(cfg.database, allow_upgrade=True)

    async def fill(db):
        await roster.add_list(db, "members", 0)
        for i in range(members):
            await roster.add_member(db, f"m{i:03d}@example.net", f"Member {i}", ["members"], 0, cfg.domain)

    await transaction(db, fill)
    await db.close()

    started = time.perf_counter()
    for i in range(n):
        bounces.read_bounce(raws[i % len(raws)])
    read_rate = n / (time.perf_counter() - started)

    async with open_runtime(cfg, ingest=False) as runtime:

        def store_all(db):
            for i in range(n):
                member = f"m{i % members:03d}=example.net"
                stored.insert_bounce(db, f"Q{i}", "members", f"members-bounces+{member}@myclub.org", member,
                                     "", raws[i % len(raws)], 0.0)  # fmt: skip

        await runtime.writer.submit(store_all)
        started = time.perf_counter()
        report = await bounces.process(runtime.writer.submit, cfg, time.time())
        elapsed = time.perf_counter() - started
    done = sum(report.counts.values())
    print(f"read_bounce: {read_rate:,.0f} reports/s ({len(raws)} formats)")
    print(f"bounces process: {done} bounces in {elapsed:.2f} s = {done / elapsed:,.0f} bounces/s")
    print("by class: " + ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bounces", type=int, default=2000)
    parser.add_argument("--members", type=int, default=200)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # one line per bounce at INFO, flufl.bounce's stumbles
    work = Path(tempfile.mkdtemp(prefix="lmtpd-bounces-"))
    try:
        asyncio.run(run(work, args.bounces, args.members))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
