"""The test club: its configuration file, its lists and members, and posts to it."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from lmtpd import roster
from lmtpd.config import Config, load
from lmtpd.daemon import Service
from lmtpd.store import open_database, transaction

REPO = Path(__file__).resolve().parent.parent.parent
DATA = REPO / "tests" / "data"

Members = dict[str, tuple[str, list[str]]]  # address -> (name, lists)

MEMBERS: Members = {
    "anna@example.net": ("Anna", ["youth", "trainers"]),
    "bob@example.net": ("Bob", ["youth"]),
    "carla@example.com": ("Carla", ["youth", "trainers"]),
    "dave@example.com": ("Dave", []),
}


def write_config(
    folder: Path,
    listen: str,
    relay_port: int = 2525,
    extra: str = "",
    posts_per_day: int = 5,
    relay_extra: str = "",
    queue_extra: str = "",
    admin: str = "admin@myclub.org",
) -> Path:
    """folder/lmtpd.toml for myclub.org: LMTP on ``listen``, the smarthost on 127.0.0.1:``relay_port``."""
    path = folder / "lmtpd.toml"
    if "[auth]" not in extra:  # most tests post unsigned mail from 127.0.0.1
        extra += '\n[auth]\nrequire = "none"\n'
    path.write_text(
        f"""
domain = "myclub.org"
database = "club.sqlite3"
admin = "{admin}"
hostname = "lists.myclub.org"
{extra}
[lmtp]
listen = "{listen}"
socket_mode = "0666"
max_message_size = 200000
shutdown_grace = 5

[relay]
host = "127.0.0.1"
port = {relay_port}
connections = 3
timeout = 10
{relay_extra}
[queue]
{queue_extra}

[limits]
posts_per_day = {posts_per_day}
"""
    )
    return path


async def populate(cfg: Config, members: Members = MEMBERS) -> None:
    """Lists youth (anyone in the club posts) and trainers (its members post), and ``members``."""
    db = await open_database(cfg.database)

    async def fill(db):
        await roster.add_list(db, "youth", 0, roster.ListSettings(description="Youth section"))
        await roster.add_list(db, "trainers", 0, roster.ListSettings(posters="list"))
        for address, (name, lists) in members.items():
            await roster.add_member(db, address, name, lists, 0, cfg.domain)

    try:
        await transaction(db, fill)
    finally:
        await db.close()


async def new_club(
    folder: Path, listen: str = "", relay_port: int = 2525, members: Members = MEMBERS, **settings: Any
) -> Config:
    """A club in ``folder`` with its lists and ``members``: :func:`write_config` (``settings``
    are its keyword arguments), loaded and populated. LMTP on folder/lmtpd.sock unless ``listen``
    says otherwise; the config file is ``cfg.source``."""
    cfg = load(write_config(folder, listen or f"unix:{folder}/lmtpd.sock", relay_port, **settings))
    await populate(cfg, members)
    return cfg


async def add_list(cfg: Config, name: str, settings: roster.ListSettings | None = None) -> None:
    """One more list in the club's database."""
    db = await open_database(cfg.database)
    try:
        await transaction(db, lambda db: roster.add_list(db, name, 0, settings or roster.ListSettings()))
    finally:
        await db.close()


def lmtp_target(cfg: Config) -> str:
    """Where the club's LMTP server listens, as lmtpclient takes it."""
    return str(cfg.lmtp.listen)


def message(
    author: str = "Anna <anna@example.net>",
    subject: str = "Training on Saturday",
    body: str = "See you at 10.\r\n",
    extra: str = "",
) -> bytes:
    """A post to youth, CRLF line endings; ``extra`` is more header lines."""
    return (
        f"From: {author}\r\nTo: youth@myclub.org\r\nSubject: {subject}\r\n"
        f"Message-ID: <{abs(hash((author, subject, body)))}@example.net>\r\n"
        f"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n{extra}\r\n{body}"
    ).encode()


def rows(cfg: Config, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    """What a query finds in the club's database now."""
    db = sqlite3.connect(cfg.database)
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


@asynccontextmanager
async def running(cfg: Config, clock: Callable[[], float]) -> AsyncIterator[Service]:
    """lmtpd's service (LMTP, policy if configured, delivery on this loop) for the body of a ``with``."""
    svc = Service(cfg, clock)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()
