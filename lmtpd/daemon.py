"""``lmtpd serve``: wires the stages together and shuts them down in order.

Start: signal handlers, database (schema checked), group-commit writer, LMTP
listener, delivery worker (in a process of its own, see :class:`DeliveryProcess`).
SIGTERM: stop accepting, let sessions inside a transaction finish within the grace
period, stop the worker, commit what is pending, remove the socket. SIGHUP: read
the configuration again (see :meth:`Service.reload`).

Limits keep a flood from taking the process down: at most ``max_connections``
sessions per server (more are told ``421`` and closed), a timeout on silent
clients, enough file descriptors for both, and one log line per minute, not a
traceback per attempt, when accept() fails anyway.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import resource
import shutil
import signal
import socket
import stat
import sys
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, Listen, load
from .copies import SigningError
from .delivery import Worker
from .ingest import IngestHandler
from .lmtp import LMTPServer
from .policy import MAX_LINE, PolicyServer
from .runtime import make_checker, make_signer, open_runtime
from .store import StoreError

log = logging.getLogger(__name__)


BACKLOG = 1024  # every Postfix smtpd process may connect at once
# glibc hands freed heap back to the kernel whenever it dips and faults it in again
# for the next copies: in a process as lean as the worker, three times the page
# faults and a fifth of its throughput. Keeping 16 MB of slack stops the churn.
DELIVERY_ENV = {"MALLOC_TOP_PAD_": str(16 << 20), **os.environ}
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # seconds before starting a dead worker again
LOG_EVERY = 60.0  # seconds between two log lines about the same overload
SPARE_FDS = 64  # descriptors beyond the sessions: database, pipes, DNS, the worker
TOO_MANY = b"421 4.3.2 Too many connections, try again later\r\n"
ACCEPT_RETRY = 1.0  # seconds without accepting after accept() failed (out of descriptors)


class ListenError(Exception):
    """The listening socket cannot be set up (in use, bad path, unknown group)."""


class Service:
    """The LMTP server, the policy service and the delivery worker.

    Given ``delivery_command``, the worker runs in a process of its own started with
    it (as ``serve`` does); without, on this event loop (tests, with a fake clock).
    """

    def __init__(
        self, cfg: Config, clock: Callable[[], float] = time.time, delivery_command: Sequence[str] | None = None
    ):
        self.cfg = cfg
        self.clock = clock
        self.sessions: set[LMTPServer] = set()
        self.server: Listener | None = None
        self.policy_server: Listener | None = None
        self.worker: Worker | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self.delivery: DeliveryProcess | None = None
        if delivery_command and cfg.relay.deliver:
            self.delivery = DeliveryProcess(delivery_command, cfg.lmtp.shutdown_grace)
        self.lmtp_gate = _Gate("lmtp", cfg.lmtp.max_connections)
        self.policy_gate = _Gate("policy", cfg.policy.max_connections)
        self._resources = AsyncExitStack()  # the runtime: database, writer, in-loop worker
        self.started = False

    async def start(self, allow_upgrade: bool = False) -> None:
        try:
            await self._start(allow_upgrade)
        except BaseException:
            await self._abort_start()
            raise
        self.started = True

    async def _start(self, allow_upgrade: bool) -> None:
        cfg = self.cfg
        self.runtime = await self._resources.enter_async_context(
            open_runtime(cfg, self.clock, deliver=self.delivery is None, allow_upgrade=allow_upgrade)
        )
        self.writer, self.reader, self.worker = self.runtime.writer, self.runtime.reader, self.runtime.worker
        self.handler = self._make_handler(cfg)
        _ensure_descriptors(cfg)
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.BaseProtocol:
            if self.lmtp_gate.full():
                return _Refuse(TOO_MANY)
            session = _Session(
                self.handler,
                gate=self.lmtp_gate,
                sessions=self.sessions,
                hostname=self.cfg.hostname,
                ident="lmtpd",
                data_size_limit=self.cfg.lmtp.max_message_size,
                enable_SMTPUTF8=True,
                timeout=self.cfg.lmtp.timeout,
                loop=loop,
            )
            self.lmtp_gate.add(session)
            return session

        self.server = _listen(cfg.lmtp.listen, factory, loop)
        if cfg.policy.listen is not None:
            self.policy = PolicyServer(cfg, self.reader, self.clock)

            def policy_factory() -> asyncio.BaseProtocol:
                if self.policy_gate.full():
                    return _Refuse(b"")  # Postfix tries again, then answers its client 451
                conn = _PolicyConnection(
                    asyncio.StreamReader(limit=MAX_LINE, loop=loop),
                    lambda r, w: self.policy.handle(r, w),  # the policy of the moment: reload replaces it
                    self.policy_gate,
                    self.cfg.policy.timeout,
                    loop,
                )
                self.policy_gate.add(conn)
                return conn

            self.policy_server = _listen(cfg.policy.listen, policy_factory, loop)
            log.info("policy service listening on %s", cfg.policy.listen)
        if self.delivery is not None:
            await self.delivery.start()
        elif cfg.relay.deliver and self.worker is not None:
            self._worker_task = loop.create_task(self.worker.run(), name="lmtpd-delivery")
        log.info("lmtpd listening on %s for %s", cfg.lmtp.listen, cfg.domain)

    def _make_handler(self, cfg: Config) -> IngestHandler:
        """The ingest hooks for new sessions, built from ``cfg`` (at start and on reload)."""
        wake = self.delivery.wake if self.delivery is not None else self.worker.wake if self.worker else None
        return self.runtime.ingest(wake, make_checker(cfg), make_signer(cfg), cfg=cfg)

    async def _abort_start(self) -> None:
        """A start that failed half-way leaves no socket, thread or connection behind."""
        for server, listen in ((self.server, self.cfg.lmtp.listen), (self.policy_server, self.cfg.policy.listen)):
            if server is not None:
                server.close()
                if listen is not None and listen.path is not None:
                    listen.path.unlink(missing_ok=True)
        if self.delivery is not None:
            await self.delivery.stop()
        await self._resources.aclose()

    def reload(self) -> None:
        """SIGHUP: read the file again; new sessions and a new delivery worker use it.

        What is bound at start (the database, the listening sockets) keeps its old
        value until a restart, and the log says so. A file that no longer loads
        changes nothing: the service goes on as it was.
        """
        old = self.cfg
        if old.source is None:
            log.warning("reload: no configuration file to read")
            return
        try:
            new = load(old.source)
            handler = self._make_handler(_keep_bound(old, new))
        except (ConfigError, SigningError) as exc:
            log.error("reload failed, configuration unchanged: %s", exc)
            return
        changed = [name for name, value in _bound(old).items() if _bound(new)[name] != value]
        if changed:
            log.warning("reload: %s changed: takes effect after a restart", ", ".join(changed))
        self.cfg = cfg = _keep_bound(old, new)
        self.handler = handler
        if self.policy_server is not None:
            self.policy = PolicyServer(cfg, self.reader, self.clock)
        self.lmtp_gate.limit = cfg.lmtp.max_connections
        self.policy_gate.limit = cfg.policy.max_connections
        _ensure_descriptors(cfg)
        if self.delivery is not None and not changed:
            self.delivery.restart()  # it reads the file when it starts
        elif self.delivery is not None:  # a new one would read the new database path too
            log.warning("reload: the delivery worker keeps its configuration until a restart")
        log.info("configuration reloaded from %s", old.source)

    async def stop(self) -> None:
        grace = self.cfg.lmtp.shutdown_grace
        if self.server is not None:
            self.server.close()
        if self.policy_server is not None:
            self.policy_server.close()  # Postfix answers its clients 451 meanwhile
        policy_conns = self.policy_gate.connections()
        for conn in policy_conns:
            conn.close()  # its handler sees the end of the stream and returns
        handlers = [conn.task for conn in policy_conns if conn.task is not None and not conn.task.done()]
        if handlers:
            await asyncio.wait(handlers, timeout=2)
        deadline = time.monotonic() + grace
        while True:
            for session in list(self.sessions):
                session.close_idle()
            if not any(s.busy for s in self.sessions) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.close()
        if self.delivery is not None:
            await self.delivery.stop()
        if self.worker is not None:
            await stop_worker(self.worker, self._worker_task, grace)
        await self._resources.aclose()  # commits what is pending, closes the database
        if self.writer.batches:
            log.info(
                "group commit: %d jobs in %d commits (%.1f per commit)",
                self.writer.jobs,
                self.writer.batches,
                self.writer.jobs / self.writer.batches,
            )
        for listen in (self.cfg.lmtp.listen, self.cfg.policy.listen):
            if listen is not None and listen.path is not None:
                listen.path.unlink(missing_ok=True)
        log.info("lmtpd stopped")

    async def run_until_signalled(self, allow_upgrade: bool = False) -> None:
        # Handlers first: a SIGTERM that comes as soon as the socket answers must
        # find them in place, or the default action kills the process (status -15).
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        await self.start(allow_upgrade)
        worker = self._worker_task
        waiters = [asyncio.ensure_future(stop.wait())]
        if worker is not None:
            waiters.append(worker)  # a worker that dies ends the service loudly
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if worker is not None and worker.done() and not stop.is_set():
            log.error("delivery worker ended unexpectedly: %r", worker.exception())
        log.info("shutting down")
        await self.stop()

    def _on_sighup(self) -> None:
        if not self.started:
            log.warning("SIGHUP while starting: ignored; send it again once lmtpd listens")
            return
        try:
            self.reload()
        except Exception:  # a reload must never take the service down
            log.exception("reload failed")


def _bound(cfg: Config) -> dict[str, Any]:
    """What is fixed at start, by the name an operator knows it by."""
    return {
        "database": cfg.database,
        "[lmtp] listen": cfg.lmtp.listen,
        "[policy] listen": cfg.policy.listen,
        "[relay] deliver": cfg.relay.deliver,
    }


def _keep_bound(old: Config, new: Config) -> Config:
    """``new``, except for what only a restart can change."""
    return dataclasses.replace(
        new,
        database=old.database,
        lmtp=dataclasses.replace(new.lmtp, listen=old.lmtp.listen),
        policy=dataclasses.replace(new.policy, listen=old.policy.listen),
        relay=dataclasses.replace(new.relay, deliver=old.relay.deliver),
    )


def _ensure_descriptors(cfg: Config) -> None:
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


class _Throttled:
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


class _Gate:
    """Counts a server's open connections against its cap."""

    def __init__(self, section: str, limit: int):
        self.limit = limit
        self._open: weakref.WeakSet[Any] = weakref.WeakSet()  # a connection that never started is forgotten
        self._refused = _Throttled(f"[{section}] connections refused: max_connections reached")

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


class _Refuse(asyncio.Protocol):
    """A connection over the cap: one reply, then closed, before anything is read."""

    def __init__(self, reply: bytes):
        self.reply = reply

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        if self.reply:
            transport.write(self.reply)
        transport.close()


class _Session(LMTPServer):
    """An LMTP session counted against the service's cap until it ends."""

    def __init__(self, *args: Any, gate: _Gate, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._gate = gate

    def connection_lost(self, error: Exception | None) -> None:
        self._gate.release(self)
        super().connection_lost(error)
        # A client gone before its greeting was written (BrokenPipeError) leaves the
        # error in asyncio's "closed" future, which nobody awaits; asyncio logs it
        # with a traceback whenever the garbage collector happens to free it first.
        closed: asyncio.Future[None] | None = getattr(self, "_closed", None)
        if closed is not None and closed.done() and not closed.cancelled():
            closed.exception()


class _PolicyConnection(asyncio.StreamReaderProtocol):
    """A policy client's connection: counted against the cap, closed after a long silence."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        gate: _Gate,
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


async def stop_worker(worker: Worker, task: asyncio.Task[None] | None, grace: float) -> None:
    """Let the current pass finish within half the grace period; unfinished copies stay queued.

    The worker is closed (its leases handed back) by the runtime that built it.
    """
    await worker.stop()
    if task is not None:
        try:
            await asyncio.wait_for(task, timeout=max(1.0, grace / 2))
        except (TimeoutError, asyncio.CancelledError):
            log.warning("delivery pass interrupted; unfinished copies stay queued")
        except Exception:
            log.exception("delivery worker failed")


class DeliveryProcess:
    """The delivery worker in a process of its own, started and watched by ``serve``.

    Relaying is steady CPU work; on the LMTP server's event loop it would take
    turns with the sessions Postfix is waiting on. In its own process it has a
    core of its own, at a lower priority: when the CPU is short, accepting mail
    goes first and the copies wait in the queue. Its stdin is a pipe from serve:
    a line means "new copies are queued", the end of it means "stop", also when
    serve was killed. A worker that dies is started again after a pause.
    """

    def __init__(self, command: Sequence[str], grace: float):
        self.command = list(command)
        self.grace = grace
        self.proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        self._restarting = False

    async def start(self) -> None:
        try:
            await self._spawn()
        except OSError as exc:  # tried again by the watch
            log.error("cannot start the delivery worker: %s", exc)
        self._watch = asyncio.get_running_loop().create_task(self._supervise(), name="lmtpd-delivery-watch")

    async def _spawn(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(*self.command, stdin=asyncio.subprocess.PIPE, env=DELIVERY_ENV)
        log.info("delivery worker started as process %d", self.proc.pid)

    def wake(self) -> None:
        """After ingest committed new copies."""
        proc = self.proc
        if proc is None or proc.returncode is not None or proc.stdin is None or proc.stdin.is_closing():
            return
        if proc.stdin.transport.get_write_buffer_size() == 0:  # else a wake-up is on its way
            proc.stdin.write(b"\n")

    async def _supervise(self) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            if self.proc is not None:
                status = await self.proc.wait()
                if self._stopping:
                    return
                if self._restarting:  # asked for: start the next one now
                    self._restarting = False
                    log.info("delivery worker %d stopped for a reload", self.proc.pid)
                    try:
                        await self._spawn()
                    except OSError as exc:
                        log.error("cannot start the delivery worker: %s", exc)
                        self.proc = None
                    continue
                if time.monotonic() - started > RESTART_DELAYS[-1]:
                    failures = 0  # it had been running well: a fresh start
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
            failures += 1
            if self.proc is not None:
                log.error(
                    "delivery worker %d exited with status %s; starting it again in %.0f s",
                    self.proc.pid,
                    status,
                    delay,
                )
            await asyncio.sleep(delay)
            try:
                await self._spawn()
            except OSError as exc:
                log.error("cannot start the delivery worker: %s", exc)
                self.proc = None

    def restart(self) -> None:
        """Reload: the worker finishes its pass, and the next one reads the configuration."""
        proc = self.proc
        if proc is None or proc.returncode is not None or proc.stdin is None:
            return
        self._restarting = True
        proc.stdin.close()

    async def stop(self) -> None:
        """Close its pipe and wait for it to finish its pass; kill it if it does not."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with suppress(asyncio.CancelledError):
                await self._watch
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout=max(1.0, self.grace / 2) + 10)
        except TimeoutError:
            log.warning("delivery worker %d did not stop; killing it", proc.pid)
            proc.kill()
            await proc.wait()


class _WakePipe(asyncio.Protocol):
    """The delivery worker's end of serve's pipe."""

    def __init__(self, wake: Callable[[], None], stop: Callable[[], None]):
        self.wake = wake
        self.stop = stop

    def data_received(self, data: bytes) -> None:
        self.wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop()


async def run_delivery(cfg: Config, from_serve: bool) -> None:
    """``lmtpd deliver``: the delivery worker alone, until SIGTERM or the end of serve's pipe."""
    async with open_runtime(cfg, time.time, ingest=False, deliver=True) as runtime:
        worker = runtime.worker
        assert worker is not None
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # serve starts a new worker on its reload; alone, the worker needs a restart
        loop.add_signal_handler(signal.SIGHUP, log.info, "SIGHUP: the delivery worker reads its configuration at start")
        if from_serve:
            await loop.connect_read_pipe(lambda: _WakePipe(worker.wake, stop.set), sys.stdin)
        task = loop.create_task(worker.run(), name="lmtpd-delivery")
        log.info("delivery worker ready (process %d)", os.getpid())
        await asyncio.wait([asyncio.ensure_future(stop.wait()), task], return_when=asyncio.FIRST_COMPLETED)
        failed = task.done() and not stop.is_set()
        if failed:
            log.error("delivery worker ended unexpectedly: %r", task.exception())
        await stop_worker(worker, task, cfg.lmtp.shutdown_grace)
    if failed:
        raise SystemExit(1)


Factory = Callable[[], asyncio.BaseProtocol]


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
        self._failed = _Throttled("cannot accept connections")
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


def _listen(listen: Listen, factory: Factory, loop: asyncio.AbstractEventLoop) -> Listener:
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
    _remove_stale_socket(path)
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


def _remove_stale_socket(path: Path) -> None:
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


__all__ = ["Service", "ListenError", "StoreError"]
