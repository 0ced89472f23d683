"""Backup, check and restore (``lmtpd db backup|check|restore``), as processes, while serve runs.

The documented restore: stop serve, restore the file, start serve; the queue resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
from pathlib import Path

from lmtpd.config import load

from .helpers import lmtpclient
from .helpers.club import lmtp_target, message, populate, rows, write_config
from .helpers.processes import serving, spawn_lmtpd
from .helpers.sink import Sink


async def lmtpd(config: Path, *args: str) -> tuple[int, str]:
    proc = await spawn_lmtpd(config, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


async def test_backup_under_load_then_restore_and_the_queue_resumes(short_dir: Path, sink: Sink):
    config = write_config(
        short_dir, f"unix:{short_dir}/lmtpd.sock", sink.port, relay_extra="deliver = false", posts_per_day=10000
    )
    cfg = load(config)
    await populate(cfg)
    backup = short_dir / "backup.sqlite3"
    big = ("y" * 76 + "\r\n") * 300

    async with serving(config):

        async def post(i: int) -> None:
            t = await lmtpclient.send(
                lmtp_target(cfg), "anna@example.net", ["youth@myclub.org"], message(subject=f"load {i}", body=big)
            )
            assert t.data[0].startswith("250"), t

        done = asyncio.Event()

        async def load_() -> None:
            for i in range(0, 8000, 4):  # until the backup is done, then one round more (bounded)
                finished = done.is_set()
                await asyncio.gather(*(post(i + k) for k in range(4)))
                if finished:
                    return

        loader = asyncio.ensure_future(load_())
        await asyncio.sleep(0.3)  # the backup starts while posts are being committed
        code, out = await lmtpd(config, "db", "backup", str(backup))
        done.set()
        assert code == 0, out
        assert "backed up" in out
        await loader
    total = rows(cfg, "SELECT count(*) FROM messages")[0][0]

    code, out = await lmtpd(config, "db", "check", "--file", str(backup))
    assert code == 0 and out.strip().endswith("OK"), out
    snap = sqlite3.connect(backup)
    in_backup = snap.execute("SELECT count(*) FROM messages").fetchone()[0]
    per_post = snap.execute("SELECT DISTINCT count(*) FROM deliveries GROUP BY post_id").fetchall()
    snap.close()
    assert per_post in ([], [(3,)])  # a snapshot: every post with all of its copies
    assert 0 < in_backup < total  # taken while posts were coming in

    # disaster: the database is lost; serve is stopped. Restore, then start again.
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{cfg.database}{suffix}")
    code, out = await lmtpd(config, "db", "restore", str(backup), "--yes")
    assert code == 0, out
    code, out = await lmtpd(config, "db", "check")
    assert code == 0, out
    assert rows(cfg, "SELECT count(*) FROM messages")[0][0] == in_backup

    write_config(short_dir, f"unix:{short_dir}/lmtpd.sock", sink.port, posts_per_day=10000)  # delivery on again
    async with serving(config):
        await sink.wait_for(3 * in_backup, seconds=60)
    assert rows(cfg, "SELECT count(*) FROM deliveries WHERE state = 'sent'")[0][0] == 3 * in_backup


async def test_check_names_broken_invariants_and_a_damaged_backup_is_refused(short_dir: Path, sink: Sink):
    config = write_config(short_dir, f"unix:{short_dir}/lmtpd.sock", sink.port, relay_extra="deliver = false")
    cfg = load(config)
    await populate(cfg)
    async with serving(config):
        t = await lmtpclient.send(lmtp_target(cfg), "anna@example.net", ["youth@myclub.org"], message())
        assert t.data[0].startswith("250")
    db = sqlite3.connect(cfg.database, isolation_level=None)
    db.execute("PRAGMA foreign_keys = OFF")
    db.execute("UPDATE deliveries SET lease_owner = 'nohost-of-ours:1' WHERE id = 1")
    db.execute("UPDATE deliveries SET lease_owner = ? WHERE id = 2", (f"{socket.gethostname()}:999999",))
    db.execute("DELETE FROM posts")
    db.close()
    code, out = await lmtpd(config, "db", "check")
    assert code == 65, out
    assert "copies without their post: 3" in out
    assert "foreign key: deliveries row 1 names a missing posts row" in out
    assert "1 copies leased by" in out and ":999999, a process that is gone" in out

    damaged = short_dir / "damaged.sqlite3"
    damaged.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    code, out = await lmtpd(config, "db", "restore", str(damaged), "--yes")
    assert code in (65, 74), out
    assert rows(cfg, "SELECT count(*) FROM deliveries")[0][0] == 3  # untouched
