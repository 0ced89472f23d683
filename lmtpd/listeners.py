"""Listening sockets and the connections they take, bounded: what keeps a flood out.

At most ``max_connections`` sessions per server (more are told ``421`` and closed),
a timeout on silent clients, enough file descriptors for both, and one log line per
minute, not a traceback per attempt, when accept() fails anyway.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import shutil
import socket
import stat
import weakref
from collections.abc import Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from .config import Config, Listen
from .lmtp import LMTPServer

log = logging.getLogger(__name__)

BACKLOG = 1024  # every Postfix smtpd process may connect at once
LOG_EVERY = 60.0  # seconds between two log lines about the same overload
SPARE_FDS = 64  # descriptors beyond the sessions: database, pipes, DNS, the worker
TOO_MANY = b"421 4.3.2 Too many connections, try again later\r\n"
ACCEPT_RETRY = 1.0  # seconds without accepting after accept() failed (out of descriptors)
Factory = Callable[[], asyncio.BaseProtocol]


class ListenError(Exception):
    """The listening socket cannot be set up (in use, bad path, unknown group)."""


def ensure_descriptors(cfg: Config) -> None:
    """Raise the soft limit on open files to what the connection caps may need."""
    need = cfg.lmtp.max_connections + SPARE_FDS
    if cfg.policy.listen is not None:
        need += cfg.policy.max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    wanted = need if hard == resource.RLIM_INFINITY else min(need, hard)
    with suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    if soft < need:
        log.warning(
            "only %d file descriptors (ulimit -n) for %d connections: lower max_connections or raise the limit",
            soft,
            need - SPARE_FDS,
        )


class Throttled:
    """A warning that may repeat thousands of times a second, logged once per interval.

    The first occurrence is logged at once; later ones are counted, and the count
    is logged when the interval is over (and again for as long as they go on).
    """

    def __init__(self, message: str, interval: float | None = None):
        self.message = message
        self.interval = LOG_EVERY if interval is None else interval
        self.count = 0
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, detail: str = "") -> None:
        if self._timer is not None:
            self.count += 1
            return
        log.warning("%s%s", self.message, f": {detail}" if detail else "")
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._summary)

    def _summary(self) -> None:
        self._timer = None
        if self.count:
            log.warning("%s: %d more times in the last %.0f s", self.message, self.count, self.interval)
            self.count = 0
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._summary)


class Gate:
    """Counts a server's open connections against its cap."""

    def __init__(self, section: str, limit: int):
        self.limit = limit
        self._open: weakref.WeakSet[Any] = weakref.WeakSet()  # a connection that never started is forgotten
        self._refused = Throttled(f"[{section}] connections refused: max_connections reached")

    def full(self) -> bool:
        if len(self._open) < self.limit:
            return False
        self._refused(f"{self.limit} open")
        return True

    def add(self, conn: Any) -> None:
        self._open.add(conn)

    def release(self, conn: Any) -> None:
        self._open.discard(conn)

    def connections(self) -> list[Any]:
        return list(self._open)

    def __len__(self) -> int:
        return len(self._open)


class Refuse(asyncio.Protocol):
    """A connection over the cap: one reply, then closed, before anything is read."""

    def __init__(self, reply: bytes):
        self.reply = reply

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        if self.reply:
            transport.write(self.reply)
        transport.close()


class LMTPSession(LMTPServer):
    """An LMTP session counted against the service's cap until it ends."""

    def __init__(self, *args: Any, gate: Gate, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._gate = gate

    def connection_lost(self, error: Exception | None) -> None:
        self._gate.release(self)
        super().connection_lost(error)


class PolicyConnection(asyncio.StreamReaderProtocol):
    """A policy client's connection: counted against the cap, closed after a long silence."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        gate: Gate,
        timeout: float,
        loop: asyncio.AbstractEventLoop,
    ):
        super().__init__(reader, self._client, loop=loop)
        self._handle = handle
        self.task: asyncio.Task[None] | None = None
        self._gate = gate
        self._timeout = timeout
        self._loop_ = loop
        self._last = loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._transport_: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport_ = transport
        self._timer = self._loop_.call_later(self._timeout, self._check_idle)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._last = self._loop_.time()
        super().data_received(data)

    def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A task of our own: asyncio's for a coroutine callback reports its
        # cancellation at shutdown as an error, with a traceback.
        self.task = self._loop_.create_task(self._serve(reader, writer))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handle(reader, writer)
        except asyncio.CancelledError:
            writer.close()  # shutdown: the connection simply ends
        except Exception:
            log.exception("policy connection failed")
            writer.close()

    def _check_idle(self) -> None:
        idle = self._loop_.time() - self._last
        if idle < self._timeout:
            self._timer = self._loop_.call_later(self._timeout - idle, self._check_idle)
            return
        log.debug("policy client silent for %.0f s: closing", idle)
        self.close()

    def close(self) -> None:
        if self._transport_ is not None:
            self._transport_.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._gate.release(self)
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(exc)


class Listener:
    """A listening socket whose connections go to a protocol factory.

    asyncio's own accept loop (Python 3.11) keeps calling accept() after it failed
    for want of descriptors (EMFILE), up to the backlog's 1024 times in one go, and
    reports each with a traceback and a retry of its own, which fail again, also
    after the server was closed. Here a failure stops the round, pauses accepting
    for a second and is logged once a minute.
    """

    BATCH = 64  # connections taken per wake-up; the next ones wait a loop iteration

    def __init__(
        self, sock: socket.socket, factory: Callable[[], asyncio.BaseProtocol], loop: asyncio.AbstractEventLoop
    ):
        self.sock = sock
        self.factory = factory
        self.loop = loop
        self._retry: asyncio.TimerHandle | None = None
        self._pending: set[asyncio.Task[Any]] = set()
        self._failed = Throttled("cannot accept connections")
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(self.BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._failed(exc.strerror or str(exc))
                self.loop.remove_reader(self.sock.fileno())
                self._retry = self.loop.call_later(ACCEPT_RETRY, self._resume)
                return
            task = self.loop.create_task(self._connect(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.factory, conn)
        except Exception as exc:
            conn.close()
            self._failed(f"{type(exc).__name__}: {exc}")

    def _resume(self) -> None:
        self._retry = None
        if self.sock.fileno() >= 0:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting; sessions already open go on."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


def open_listener(listen: Listen, factory: Factory, loop: asyncio.AbstractEventLoop) -> Listener:
    """Listen on TCP, or on a Unix socket given the configured mode and group."""
    if listen.path is None:
        assert listen.host is not None and listen.port is not None
        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        try:
            sock = socket.create_server((listen.host, listen.port), family=family, backlog=BACKLOG)
        except OSError as exc:
            raise ListenError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
        return Listener(sock, factory, loop)
    path = listen.path
    remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    try:
        if listen.group:
            shutil.chown(path, group=listen.group)
        os.chmod(path, listen.mode)
    except (OSError, LookupError) as exc:
        sock.close()
        path.unlink(missing_ok=True)
        raise ListenError(f"cannot set owner/mode of {path}: {exc}") from None
    return Listener(sock, factory, loop)


def remove_stale_socket(path: Path) -> None:
    """A socket left by a killed process is removed; one still answering is not."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise ListenError(f"{path} is in use by another process")
