"""Shared fixtures: a club on a real SQLite file, a real LMTP server on a Unix
socket, and aiosmtpd sinks on 127.0.0.1 standing in for the smarthost."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP

from lmtpd import roster
from lmtpd.config import Config, load
from lmtpd.daemon import Service
from lmtpd.store import open_database, transaction

from .sandbox import Sandbox

DATA = Path(__file__).parent / "data"
SANDBOX = pytest.StashKey[Sandbox]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SANDBOX] = Sandbox()


@pytest.hookimpl(trylast=True)  # after the last fixtures were torn down
def pytest_sessionfinish(session: pytest.Session) -> None:
    problems = session.config.stash[SANDBOX].problems()
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", "the test session changed the machine", red=True)
        for line in problems:
            reporter.write_line(line, red=True) if reporter is not None else print(line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    config.stash[SANDBOX].close()


MEMBERS = {
    "anna@example.net": ("Anna", ["youth", "trainers"]),
    "bob@example.net": ("Bob", ["youth"]),
    "carla@example.com": ("Carla", ["youth", "trainers"]),
    "dave@example.com": ("Dave", []),
}


class Clock:
    """Injected time: tests move it instead of sleeping."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: Unix socket paths are limited to ~100 bytes."""
    path = Path(tempfile.mkdtemp(prefix="lm"))  # in the session's directory, see sandbox.py
    yield path
    shutil.rmtree(path, ignore_errors=True)


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


async def populate(cfg: Config, members: dict = MEMBERS) -> None:
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


@dataclass
class Received:
    mail_from: str
    rcpt: str
    data: bytes


@dataclass
class Sink:
    """A scriptable SMTP far end: refuse some recipients, hold DATA, record the rest."""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    hold: asyncio.Event | None = None
    server: asyncio.AbstractServer | None = None
    data_started: int = 0
    drop_in_data: bool = False  # close the connection instead of answering DATA
    sessions: int = 0

    async def handle_RCPT(self, server, session, envelope, address, options):
        reply = self.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server, session, envelope):
        self.data_started += 1
        if self.drop_in_data:
            server.transport.close()
            return "421 4.3.0 gone"
        if self.hold is not None:
            await self.hold.wait()
        for rcpt in envelope.rcpt_tos:
            self.received.append(Received(envelope.mail_from, rcpt, envelope.original_content))
        return "250 2.0.0 queued"

    def to(self, rcpt: str) -> list[Received]:
        return [r for r in self.received if r.rcpt == rcpt]

    async def wait_for(self, count: int, seconds: float = 10) -> None:
        await eventually(lambda: len(self.received) >= count, seconds)


async def eventually(condition, seconds: float = 10, what: str = "") -> None:
    """Poll ``condition`` until true; fail after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.02)


async def start_sink(port: int = 0, host: str = "127.0.0.1", tls_context=None, protocol=SMTP) -> Sink:
    sink = Sink()
    loop = asyncio.get_running_loop()
    sink.server = await loop.create_server(
        lambda: protocol(sink, hostname="sink.example.net", enable_SMTPUTF8=True, tls_context=tls_context),
        host,
        port,
    )
    sink.port = sink.server.sockets[0].getsockname()[1]
    return sink


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    s = await start_sink()
    yield s
    assert s.server is not None
    s.server.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def club(short_dir: Path, sink: Sink) -> Config:
    """A configured club with lists and members; relay points at ``sink``."""
    cfg = load(write_config(short_dir, f"unix:{short_dir}/lmtpd.sock", sink.port))
    await populate(cfg)
    return cfg


@pytest.fixture
async def service(club: Config, clock: Clock) -> AsyncIterator[Service]:
    svc = Service(club, clock=clock)
    await svc.start()
    yield svc
    await svc.stop()


REPO = Path(__file__).resolve().parent.parent


async def spawn_lmtpd(config: Path, *args: str, **kwargs) -> asyncio.subprocess.Process:
    """``python -m lmtpd --config CONFIG ARGS`` from this source tree."""
    import os
    import sys

    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lmtpd", "--config", str(config), *args,
        env=dict(os.environ, PYTHONPATH=str(REPO)), **kwargs,
    )  # fmt: skip


async def start_serve(config: Path, *args: str) -> asyncio.subprocess.Process:
    """``lmtpd serve`` as its own process, logging to serve.log; waits for the socket."""
    from lmtpd.config import load as load_config

    log_path = config.parent / "serve.log"
    with open(log_path, "ab") as log:
        proc = await spawn_lmtpd(config, "serve", *args, stderr=log)
    listen = load_config(config).lmtp.listen
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        if proc.returncode is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {log_path.read_text()}")
        try:
            if listen.path is not None:
                _, w = await asyncio.open_unix_connection(str(listen.path))
            else:
                _, w = await asyncio.open_connection(listen.host, listen.port)
            w.close()
            return proc
        except OSError:
            if loop.time() > deadline:
                proc.kill()
                raise AssertionError("serve did not start listening") from None
            await asyncio.sleep(0.05)


def lmtp_target(cfg: Config) -> str:
    return str(cfg.lmtp.listen)


def message(
    author: str = "Anna <anna@example.net>",
    subject: str = "Training on Saturday",
    body: str = "See you at 10.\r\n",
    extra: str = "",
) -> bytes:
    return (
        f"From: {author}\r\nTo: youth@myclub.org\r\nSubject: {subject}\r\n"
        f"Message-ID: <{abs(hash((author, subject, body)))}@example.net>\r\n"
        f"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n{extra}\r\n{body}"
    ).encode()
