"""Limits and signals: a flood of connections, silent clients, SIGTERM and SIGHUP.

The daemon must outlive whatever its clients do: beyond ``max_connections`` a
session is told ``421`` and closed; a silent client is cut after ``timeout``; out of
descriptors, the log says so once a minute, not with a traceback per attempt; SIGTERM
with sessions open ends with status 0 and a quiet log; SIGHUP never kills it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import resource
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lmtpd.config import Config, load
from lmtpd.daemon import Service

from .helpers import lmtpclient
from .helpers.club import lmtp_target, message, populate, running, write_config
from .helpers.policyclient import ask, request
from .helpers.processes import children, spawn_lmtpd, start_serve, terminate
from .helpers.sink import Sink
from .helpers.timing import Clock, eventually

POLICY = '[policy]\nlisten = "unix:{folder}/policy.sock"\nsocket_mode = "0666"\n{extra}'


def limited_config(folder: Path, sink_port: int, lmtp: str = "", policy: str = "", relay: str = "") -> Path:
    """The usual test club, with more keys in [lmtp] and a policy service."""
    path = write_config(
        folder, f"unix:{folder}/lmtpd.sock", sink_port,
        extra=POLICY.format(folder=folder, extra=policy), relay_extra=relay,
    )  # fmt: skip
    path.write_text(path.read_text().replace("shutdown_grace = 5\n", f"shutdown_grace = 1\n{lmtp}"))
    return path


def edit(path: Path, changes: dict[str, str]) -> str:
    """Replace text in a file; return what it was."""
    text = new = path.read_text()
    for old, value in changes.items():
        new = new.replace(old, value) if old else value
    path.write_text(new)
    return text


def log_of(folder: Path) -> str:
    return (folder / "serve.log").read_text(errors="replace")


def first_traceback(log: str) -> str:
    at = log.find("Traceback")
    return "" if at < 0 else log[max(0, at - 1000) : at + 3000]


async def greeting(target: str) -> tuple[str, asyncio.StreamWriter]:
    """Connect and return the first reply line ("" if closed without one)."""
    reader, writer = await lmtpclient.connect(target)
    try:
        return (await lmtpclient.read_reply(reader))[0], writer
    except ConnectionError:
        return "", writer


async def served_again(cfg: Config, failure: str, seconds: float = 10) -> None:
    """Post until a post gets its 250: the daemon serves again after its trouble."""
    for _ in range(int(seconds * 10)):
        try:
            t = await lmtpclient.send(lmtp_target(cfg), "anna@example.net", ["youth@myclub.org"], message())
            if t.data[0].startswith("250"):
                return
        except (ConnectionError, AssertionError, TimeoutError):
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(failure)


@pytest.fixture
async def capped_config(short_dir: Path, sink: Sink) -> Path:
    """The config file of a populated club: at most 20 LMTP and 5 policy sessions, shutdown grace 1 s."""
    config = limited_config(short_dir, sink.port, lmtp="max_connections = 20\n", policy="max_connections = 5\n")
    await populate(load(config))
    return config


async def test_a_flood_beyond_the_cap_is_refused_and_logged_briefly(short_dir: Path, capped_config: Path):
    cfg = load(capped_config)
    proc = await start_serve(capped_config)
    await asyncio.sleep(0.2)  # start_serve's probe is gone
    try:
        replies = await asyncio.gather(*(greeting(lmtp_target(cfg)) for _ in range(60)))
        codes = sorted(line[:9] for line, _ in replies)
        assert codes.count("220 lists") == 20, codes
        assert codes.count("421 4.3.2") == 40, codes
        for _, writer in replies:
            writer.close()

        # the cap frees up as sessions end: an ordinary delivery gets through
        await served_again(cfg, "no session was served after the flood")
    finally:
        assert await terminate(proc) == 0
    log = log_of(short_dir)
    assert not first_traceback(log), first_traceback(log)
    refusals = [line for line in log.splitlines() if "max_connections reached" in line]
    assert 1 <= len(refusals) <= 2, refusals


async def test_out_of_descriptors_is_one_line_not_a_traceback_per_accept(short_dir: Path, sink: Sink):
    """With fewer descriptors than the cap, accept() fails: logged once, served again later."""
    config = limited_config(short_dir, sink.port, lmtp="max_connections = 1000\n", relay="deliver = false\n")
    cfg = load(config)
    await populate(cfg)

    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))

    log_path = short_dir / "serve.log"
    with open(log_path, "ab") as log:
        proc = await spawn_lmtpd(config, "serve", stderr=log, preexec_fn=few_descriptors)
    try:
        await eventually(lambda: cfg.lmtp.listen.path.exists(), what="serve to listen")
        writers = []
        for _ in range(80):  # more than the process has descriptors for; the backlog takes them
            _, w = await lmtpclient.connect(lmtp_target(cfg))
            writers.append(w)
        await eventually(lambda: "cannot accept connections" in log_of(short_dir), what="the accept failure")
        await asyncio.sleep(2.5)  # asyncio retries every second
        for w in writers:
            w.close()
        await served_again(cfg, "no session was served once descriptors were free")
    finally:
        assert await terminate(proc) == 0
    log = log_of(short_dir)
    assert not first_traceback(log), first_traceback(log)
    assert "only 48 file descriptors" in log
    # a first line and a count per listener that ran short (LMTP, and the policy one on a slow machine):
    # bounded, where a traceback per attempt came thousands a second
    assert 1 <= log.count("cannot accept connections") <= 4, log[-3000:]
    assert len(log.splitlines()) < 100, log[-3000:]


async def test_sigterm_with_open_lmtp_and_policy_sessions_exits_cleanly(short_dir: Path, capped_config: Path):
    cfg = load(capped_config)
    proc = await start_serve(capped_config)
    target = lmtp_target(cfg)
    idle_line, idle = await greeting(target)
    assert idle_line.startswith("220")
    r1, greeted = await lmtpclient.connect(target)
    await lmtpclient.read_reply(r1)
    greeted.write(b"LHLO c.example.org\r\n")
    await lmtpclient.read_reply(r1)
    r2, in_data = await lmtpclient.connect(target)  # stalls half-way through a message
    await lmtpclient.read_reply(r2)
    in_data.write(b"LHLO c.example.org\r\nMAIL FROM:<anna@example.net>\r\nRCPT TO:<youth@myclub.org>\r\nDATA\r\n")
    for _ in range(4):
        await lmtpclient.read_reply(r2)
    in_data.write(b"Subject: half\r\n\r\nonly the first li")
    policy_path = str(cfg.policy.listen.path)
    pr1, policy_idle = await asyncio.open_unix_connection(policy_path)
    pr2, policy_half = await asyncio.open_unix_connection(policy_path)
    assert await ask(pr2, policy_half, request(sender="anna@example.net", recipient="youth@myclub.org")) == "DUNNO"
    policy_half.write(b"request=smtpd_access_policy\nsender=anna@example.net\n")  # and no end
    await asyncio.sleep(0.2)
    assert await terminate(proc) == 0
    log = log_of(short_dir)
    assert "Traceback" not in log and "CancelledError" not in log, log[-3000:]
    for w in (idle, greeted, in_data, policy_idle, policy_half):
        w.close()


async def test_sigterm_as_soon_as_the_socket_answers(short_dir: Path, sink: Sink):
    """The handlers are in place before the socket exists: never killed by the default action."""
    config = limited_config(short_dir, sink.port)
    cfg = load(config)
    await populate(cfg)
    for _ in range(3):
        with open(short_dir / "serve.log", "ab") as log:
            proc = await spawn_lmtpd(config, "serve", stderr=log)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while True:
            try:
                _, w = await asyncio.open_unix_connection(str(cfg.lmtp.listen.path))
                break
            except OSError:
                assert proc.returncode is None and loop.time() < deadline, log_of(short_dir)
                await asyncio.sleep(0.001)
        proc.send_signal(signal.SIGTERM)
        w.close()
        assert await terminate(proc) == 0, log_of(short_dir)[-2000:]


async def test_sighup_reloads_and_never_kills(short_dir: Path, capped_config: Path):
    cfg = load(capped_config)
    proc = await start_serve(capped_config)
    try:
        await eventually(lambda: len(children(proc.pid)) == 1, what="the delivery worker")
        (worker,) = children(proc.pid)
        edit(capped_config, {"max_connections = 20": "max_connections = 2"})
        proc.send_signal(signal.SIGHUP)
        await eventually(lambda: "configuration reloaded" in log_of(short_dir), what="the reload")
        # the new cap applies to new sessions
        replies = await asyncio.gather(*(greeting(lmtp_target(cfg)) for _ in range(4)))
        assert sorted(line[:3] for line, _ in replies) == ["220", "220", "421", "421"]
        for _, w in replies:
            w.close()
        # the delivery worker was replaced by one that read the file again
        await eventually(lambda: children(proc.pid) not in ([], [worker]), what="a new delivery worker")
        (worker,) = children(proc.pid)

        # what is bound at start stays, and so does the worker, which would read it
        edit(capped_config, {"lmtpd.sock": "other.sock"})
        proc.send_signal(signal.SIGHUP)
        await eventually(lambda: log_of(short_dir).count("configuration reloaded") == 2, what="the second reload")
        assert "[lmtp] listen changed: takes effect after a restart" in log_of(short_dir)
        assert children(proc.pid) == [worker]

        edit(capped_config, {"": "this is [not toml"})  # a broken file changes nothing
        proc.send_signal(signal.SIGHUP)
        await eventually(lambda: "reload failed, configuration unchanged" in log_of(short_dir), what="the refusal")
        await asyncio.sleep(0.3)
        assert proc.returncode is None
        await eventually(lambda: len(children(proc.pid)) == 1, what="the delivery worker")
        t = await lmtpclient.send(lmtp_target(cfg), "anna@example.net", ["youth@myclub.org"], message())
        assert t.data[0].startswith("250")
    finally:
        assert await terminate(proc) == 0
    assert not first_traceback(log_of(short_dir)), first_traceback(log_of(short_dir))


# ------------------------------------------------------- timeouts, in-process


@pytest.fixture
async def impatient_service(short_dir: Path, sink: Sink, clock: Clock) -> AsyncIterator[tuple[Config, Service]]:
    """A service whose LMTP and policy timeouts are half a second."""
    config = limited_config(short_dir, sink.port)
    cfg = load(config)
    await populate(cfg)
    cfg = dataclasses.replace(
        cfg, lmtp=dataclasses.replace(cfg.lmtp, timeout=0.5), policy=dataclasses.replace(cfg.policy, timeout=0.5)
    )
    async with running(cfg, clock) as svc:
        yield cfg, svc


async def test_a_silent_lmtp_client_is_cut_after_the_timeout(impatient_service):
    cfg, svc = impatient_service
    reader, writer = await lmtpclient.connect(lmtp_target(cfg))
    await lmtpclient.read_reply(reader)
    writer.write(b"LHLO c.example.org\r\n")
    await lmtpclient.read_reply(reader)
    reply = await asyncio.wait_for(lmtpclient.read_reply(reader), 5)
    assert reply[0].startswith("421 4.4.2")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await eventually(lambda: not svc.sessions, what="the session to be gone")


async def test_a_slow_message_and_a_slow_commit_are_not_cut(impatient_service, monkeypatch):
    """The timeout counts silence: a transfer that keeps going and a long decision both finish."""
    cfg, svc = impatient_service
    decide = svc.handler.decide

    async def slow_decide(*args, **kwargs):
        await asyncio.sleep(1.2)  # longer than the timeout: Postfix waits for the replies
        return await decide(*args, **kwargs)

    monkeypatch.setattr(svc.handler, "decide", slow_decide)
    reader, writer = await lmtpclient.connect(lmtp_target(cfg))
    await lmtpclient.read_reply(reader)
    writer.write(b"LHLO c.example.org\r\nMAIL FROM:<anna@example.net>\r\nRCPT TO:<youth@myclub.org>\r\nDATA\r\n")
    for _ in range(4):
        await lmtpclient.read_reply(reader)
    body = lmtpclient.dot_stuff(message(body="line\r\n" * 40))
    for i in range(0, len(body), len(body) // 5):  # 1.5 s in all, 0.3 s between chunks
        writer.write(body[i : i + len(body) // 5])
        await asyncio.sleep(0.3)
    reply = await asyncio.wait_for(lmtpclient.read_reply(reader), 10)
    assert reply[0].startswith("250"), reply
    writer.close()
    db = sqlite3.connect(cfg.database)
    assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
    db.close()


async def test_policy_connections_have_a_cap_and_an_idle_timeout(impatient_service):
    cfg, svc = impatient_service
    path = str(cfg.policy.listen.path)
    svc.policy_gate.limit = 3
    conns = [await asyncio.open_unix_connection(path) for _ in range(5)]

    async def closed_at_once(r: asyncio.StreamReader) -> bool:
        try:
            return await asyncio.wait_for(r.read(), 0.2) == b""
        except TimeoutError:
            return False

    assert sum(await asyncio.gather(*(closed_at_once(r) for r, _ in conns))) == 2
    answered = 0
    for r, w in conns:
        try:
            answered += await ask(r, w, request(sender="anna@example.net", recipient="youth@myclub.org")) == "DUNNO"
        except (OSError, AssertionError, asyncio.IncompleteReadError):
            pass
    assert answered == 3
    # silent now: each is closed after the timeout
    for r, w in conns:
        with contextlib.suppress(OSError):  # the refused ones: the test's own write failed
            assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()
    await eventually(lambda: len(svc.policy_gate) == 0, what="the connections to be released")
