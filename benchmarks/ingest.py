"""Ingest benchmark: lmtpd serve against a bare aiosmtpd LMTP server, same load.

Drives Postfix's smtp-source over LMTP on a Unix socket (default: 20 sessions,
2,000 posts of 5 KB to a 50-member list) three times: lmtpd as in production
(its delivery worker process relaying every copy to a local smtp-sink while the
load runs), lmtpd with delivery paused (``[relay] deliver = false``: ingest alone),
and a bare aiosmtpd LMTP server that stores nothing and answers 250. Every 250
lmtpd gives follows a durable SQLite commit. Prints the rates and the ratios.

    python benchmarks/ingest.py [--posts 2000] [--sessions 20] [--size 5120] [--members 50]

$LMTPD_BENCH_SERVE replaces ``python -m lmtpd`` (to run it under a profiler).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REPO, start_serve, start_smtp_sink, stop, wait_for_worker, write_club_config  # noqa: E402
from lmtpd import roster  # noqa: E402
from lmtpd.config import load  # noqa: E402
from lmtpd.store import open_database, transaction  # noqa: E402

LIMIT_SECONDS = 600  # every run stops by itself


def wait_for_socket(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"no server on {path}")


def drive(path: Path, args: argparse.Namespace) -> float:
    """Run smtp-source once; return the elapsed seconds."""
    cmd = [
        "smtp-source",
        "-L",
        "-s",
        str(args.sessions),
        "-m",
        str(args.posts),
        "-l",
        str(args.size),
        "-f",
        "m00@example.net",
        "-t",
        "members@myclub.org",
        f"unix:{path}",
    ]
    start = time.monotonic()
    subprocess.run(cmd, check=True, timeout=LIMIT_SECONDS)
    return time.monotonic() - start


async def make_club(config: Path, members: int) -> None:
    cfg = load(config)
    db = await open_database(cfg.database)

    async def fill(db):
        await roster.add_list(db, "members", 0)
        for i in range(members):
            await roster.add_member(db, f"m{i:02d}@example.net", f"Member {i}", ["members"], 0, cfg.domain)

    await transaction(db, fill)
    await db.close()


def run_lmtpd(work: Path, sink_port: int, deliver: bool, args: argparse.Namespace) -> tuple[float, str]:
    folder = work / ("deliver" if deliver else "paused")
    config = write_club_config(
        folder, sink_port, relay=f"deliver = {'true' if deliver else 'false'}", limits="posts_per_day = 1000000000"
    )
    asyncio.run(make_club(config, args.members))
    proc = start_serve(config, folder / "serve.log")
    try:
        wait_for_socket(folder / "lmtpd.sock", proc)
        if deliver:
            wait_for_worker(folder / "serve.log", proc)
        seconds = drive(folder / "lmtpd.sock", args)
    finally:
        stop(proc)
    db = sqlite3.connect(folder / "club.sqlite3")
    stored = db.execute("SELECT count(*) FROM messages").fetchone()[0]
    copies = db.execute("SELECT count(*) FROM deliveries").fetchone()[0]
    sent = db.execute("SELECT count(*) FROM deliveries WHERE state = 'sent'").fetchone()[0]
    db.close()
    if stored != args.posts:
        raise SystemExit(f"only {stored} of {args.posts} posts were stored")
    commits = [
        line.split(": ", 3)[-1] for line in (folder / "serve.log").read_text().splitlines() if "group commit" in line
    ]
    detail = f"{stored} stored, {copies} copies queued, {sent} relayed meanwhile; {' '.join(commits)}"
    return seconds, detail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=5120)
    parser.add_argument("--members", type=int, default=50)
    args = parser.parse_args()
    for tool in ("smtp-source", "smtp-sink"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: apt-get install postfix")

    work = Path(tempfile.mkdtemp(prefix="lmbench", dir="/tmp"))
    sink, sink_port = start_smtp_sink()
    try:
        delivering = run_lmtpd(work, sink_port, True, args)
        paused = run_lmtpd(work, sink_port, False, args)
        bare = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "bare_lmtp.py"), str(work / "bare.sock")])
        try:
            wait_for_socket(work / "bare.sock", bare)
            bare_secs = drive(work / "bare.sock", args)
        finally:
            stop(bare)
    finally:
        stop(sink)
        shutil.rmtree(work, ignore_errors=True)

    bare_rate = args.posts / bare_secs
    print(
        f"load: {args.posts} posts of {args.size} bytes, {args.sessions} LMTP sessions, list of {args.members} members"
    )
    for label, (secs, detail) in (("lmtpd, delivering", delivering), ("lmtpd, delivery paused", paused)):
        rate = args.posts / secs
        print(f"{label:24s} {secs:7.2f} s {rate:8.1f} posts/s  ratio {rate / bare_rate:.2f}  ({detail})")
    print(f"{'bare aiosmtpd LMTP':24s} {bare_secs:7.2f} s {bare_rate:8.1f} posts/s")


if __name__ == "__main__":
    main()
