"""``lmtpd serve``: wires the stages together and shuts them down in order.

Start: database (schema checked), group-commit writer, LMTP listener, delivery
worker (in a process of its own, see :class:`DeliveryProcess`). SIGTERM: stop
accepting, let sessions inside a transaction finish within the grace period,
stop the worker, commit what is pending, remove the socket.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import signal
import socket
import stat
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from pathlib import Path

import dns.resolver

from . import auth, queue
from .config import Config, Listen
from .copies import Signer
from .delivery import Worker
from .ingest import IngestHandler, LMTPServer
from .policy import MAX_LINE, PolicyServer
from .routes import make_resolver
from .store import StoreError, Writer, connect_sync, open_database

log = logging.getLogger(__name__)


BACKLOG = 1024  # every Postfix smtpd process may connect at once
# glibc hands freed heap back to the kernel whenever it dips and faults it in again
# for the next copies: in a process as lean as the worker, three times the page
# faults and a fifth of its throughput. Keeping 16 MB of slack stops the churn.
DELIVERY_ENV = {"MALLOC_TOP_PAD_": str(16 << 20), **os.environ}
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # seconds before starting a dead worker again


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
        self.server: asyncio.AbstractServer | None = None
        self.policy_server: asyncio.AbstractServer | None = None
        self.worker: Worker | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self.delivery: DeliveryProcess | None = None
        if delivery_command and cfg.relay.deliver:
            self.delivery = DeliveryProcess(delivery_command, cfg.lmtp.shutdown_grace)

    async def start(self, allow_upgrade: bool = False) -> None:
        cfg = self.cfg
        db = await open_database(cfg.database, allow_upgrade)  # checks the schema
        await db.close()
        self.reader = connect_sync(cfg.database)
        self.writer = Writer(cfg.database, work=queue.FANOUT)
        await self.writer.start()
        if self.delivery is not None:
            wake = self.delivery.wake
        else:
            self.worker = Worker(cfg, self.writer, self.reader, self.clock)
            wake = self.worker.wake
        checker = auth.Checker(
            make_resolver(cfg.dns.nameservers, cfg.dns.timeout, dns.resolver.Resolver), cfg.dns.timeout
        )
        signer = Signer.from_file(cfg.domain, cfg.dkim.selector, cfg.dkim.key_file) if cfg.dkim.key_file else None
        self.handler = IngestHandler(cfg, self.writer, self.reader, self.clock, wake, checker, signer)
        loop = asyncio.get_running_loop()

        def factory() -> LMTPServer:
            return LMTPServer(
                self.handler,
                sessions=self.sessions,
                hostname=cfg.hostname,
                ident="lmtpd",
                data_size_limit=cfg.lmtp.max_message_size,
                enable_SMTPUTF8=True,
                timeout=cfg.lmtp.timeout,
                loop=loop,
            )

        self.server = await _listen(
            cfg.lmtp.listen,
            functools.partial(loop.create_server, factory, backlog=BACKLOG),
            functools.partial(loop.create_unix_server, factory, backlog=BACKLOG),
        )
        if cfg.policy.listen is not None:
            self.policy = PolicyServer(cfg, self.reader, self.clock)
            self.policy_server = await _listen(
                cfg.policy.listen,
                functools.partial(asyncio.start_server, self.policy.handle, limit=MAX_LINE, backlog=BACKLOG),
                functools.partial(asyncio.start_unix_server, self.policy.handle, limit=MAX_LINE, backlog=BACKLOG),
            )
            log.info("policy service listening on %s", cfg.policy.listen)
        if self.delivery is not None:
            await self.delivery.start()
        elif cfg.relay.deliver and self.worker is not None:
            self._worker_task = loop.create_task(self.worker.run(), name="lmtpd-delivery")
        log.info("lmtpd listening on %s for %s", cfg.lmtp.listen, cfg.domain)

    async def stop(self) -> None:
        grace = self.cfg.lmtp.shutdown_grace
        if self.server is not None:
            self.server.close()
        if self.policy_server is not None:
            self.policy_server.close()  # Postfix answers its clients 451 meanwhile
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
        await self.writer.stop()
        if self.writer.batches:
            log.info(
                "group commit: %d jobs in %d commits (%.1f per commit)",
                self.writer.jobs,
                self.writer.batches,
                self.writer.jobs / self.writer.batches,
            )
        self.reader.close()
        for listen in (self.cfg.lmtp.listen, self.cfg.policy.listen):
            if listen is not None and listen.path is not None:
                listen.path.unlink(missing_ok=True)
        log.info("lmtpd stopped")

    async def run_until_signalled(self, allow_upgrade: bool = False) -> None:
        await self.start(allow_upgrade)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        worker = self._worker_task
        waiters = [asyncio.ensure_future(stop.wait())]
        if worker is not None:
            waiters.append(worker)  # a worker that dies ends the service loudly
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if worker is not None and worker.done() and not stop.is_set():
            log.error("delivery worker ended unexpectedly: %r", worker.exception())
        log.info("shutting down")
        await self.stop()


async def stop_worker(worker: Worker, task: asyncio.Task[None] | None, grace: float) -> None:
    """Let the current pass finish within half the grace period; unfinished copies stay queued."""
    await worker.stop()
    if task is not None:
        try:
            await asyncio.wait_for(task, timeout=max(1.0, grace / 2))
        except (TimeoutError, asyncio.CancelledError):
            log.warning("delivery pass interrupted; unfinished copies stay queued")
        except Exception:
            log.exception("delivery worker failed")
    await worker.close()


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
    db = await open_database(cfg.database)  # checks the schema
    await db.close()
    writer = Writer(cfg.database)
    await writer.start()
    reader = connect_sync(cfg.database)
    worker = Worker(cfg, writer, reader, time.time)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if from_serve:
        await loop.connect_read_pipe(lambda: _WakePipe(worker.wake, stop.set), sys.stdin)
    task = loop.create_task(worker.run(), name="lmtpd-delivery")
    log.info("delivery worker ready (process %d)", os.getpid())
    await asyncio.wait([asyncio.ensure_future(stop.wait()), task], return_when=asyncio.FIRST_COMPLETED)
    failed = task.done() and not stop.is_set()
    if failed:
        log.error("delivery worker ended unexpectedly: %r", task.exception())
    await stop_worker(worker, task, cfg.lmtp.shutdown_grace)
    await writer.stop()
    reader.close()
    if failed:
        raise SystemExit(1)


Opener = Callable[..., Awaitable[asyncio.AbstractServer]]


async def _listen(listen: Listen, open_tcp: Opener, open_unix: Opener) -> asyncio.AbstractServer:
    """Listen on TCP, or on a Unix socket given the configured mode and group."""
    if listen.path is None:
        try:
            return await open_tcp(host=listen.host, port=listen.port)
        except OSError as exc:
            raise ListenError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    path = listen.path
    _remove_stale_socket(path)
    try:
        server = await open_unix(path=str(path))
    except OSError as exc:
        raise ListenError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    try:
        if listen.group:
            shutil.chown(path, group=listen.group)
        os.chmod(path, listen.mode)
    except (OSError, LookupError) as exc:
        server.close()
        path.unlink(missing_ok=True)
        raise ListenError(f"cannot set owner/mode of {path}: {exc}") from None
    return server


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
