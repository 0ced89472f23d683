"""``lmtpd serve``: wires the stages together and shuts them down in order.

Start: signal handlers, database (schema checked), group-commit writer, LMTP
listener, delivery worker (in a process of its own, see :class:`DeliveryProcess`).
SIGTERM: stop accepting, let sessions inside a transaction finish within the grace
period, stop the worker, commit what is pending, remove the socket. SIGHUP: read
the configuration again (see :meth:`Service.reload`).

The sockets and their limits are in :mod:`lmtpd.listeners`, the worker's process
in :mod:`lmtpd.supervise`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from . import counters
from .config import Config, ConfigError, load
from .copies import SigningError
from .delivery import Worker
from .housekeeping import Housekeeping
from .ingest import IngestHandler
from .listeners import (
    TOO_MANY,
    Gate,
    Listener,
    ListenError,
    LMTPSession,
    PolicyConnection,
    Refuse,
    ensure_descriptors,
    open_listener,
)
from .lmtp import LMTPServer
from .policy import MAX_LINE, PolicyServer
from .runtime import make_checker, make_signer, open_runtime
from .store import StoreError
from .supervise import DeliveryProcess, WakePipe, stop_worker

log = logging.getLogger(__name__)

WORKER_METRICS_EVERY = 5.0  # seconds between the delivery worker's writes of its counters


class Service:
    """The LMTP server, the policy service and the delivery worker.

    Given ``delivery_command``, the worker runs in a process of its own started with
    it (as ``serve`` does); without, on this event loop (tests, with a fake clock).
    """

    def __init__(
        self,
        cfg: Config,
        clock: Callable[[], float] = time.time,
        delivery_command: Sequence[str] | None = None,
        worker_metrics: Path | None = None,
    ):
        self.cfg = cfg
        self.worker_metrics = worker_metrics  # the delivery process's counters, for the metrics endpoint
        self.clock = clock
        self.sessions: set[LMTPServer] = set()
        self.server: Listener | None = None
        self.policy_server: Listener | None = None
        self.worker: Worker | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._reminders_task: asyncio.Task[None] | None = None
        self.delivery: DeliveryProcess | None = None
        if delivery_command and cfg.relay.deliver:
            self.delivery = DeliveryProcess(delivery_command, cfg.lmtp.shutdown_grace)
        self.lmtp_gate = Gate("lmtp", cfg.lmtp.max_connections)
        self.policy_gate = Gate("policy", cfg.policy.max_connections)
        self._resources = AsyncExitStack()  # the runtime: database, writer, in-loop worker
        self.housekeeping: Housekeeping | None = None
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
        ensure_descriptors(cfg)
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.BaseProtocol:
            if self.lmtp_gate.full():
                return Refuse(TOO_MANY)
            session = LMTPSession(
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

        self.server = open_listener(cfg.lmtp.listen, factory, loop)
        if cfg.policy.listen is not None:
            self.policy = PolicyServer(cfg, self.reader, self.clock)

            def policy_factory() -> asyncio.BaseProtocol:
                if self.policy_gate.full():
                    return Refuse(b"")  # Postfix tries again, then answers its client 451
                conn = PolicyConnection(
                    asyncio.StreamReader(limit=MAX_LINE, loop=loop),
                    lambda r, w: self.policy.handle(r, w),  # the policy of the moment: reload replaces it
                    self.policy_gate,
                    self.cfg.policy.timeout,
                    loop,
                )
                self.policy_gate.add(conn)
                return conn

            self.policy_server = open_listener(cfg.policy.listen, policy_factory, loop)
            log.info("policy service listening on %s", cfg.policy.listen)
        if self.delivery is not None:
            await self.delivery.start()
        elif cfg.relay.deliver and self.worker is not None:
            self._worker_task = loop.create_task(self.worker.run(), name="lmtpd-delivery")
        # reminders run here, beside ingest: this writer fans out, and wakes the worker as a post does
        self.scheduler = self.runtime.reminders(self.handler.signer, self.handler.on_accepted)
        self._reminders_task = loop.create_task(self.scheduler.run(), name="lmtpd-reminders")
        self.housekeeping = Housekeeping(cfg, self.writer, self.clock, self.worker_metrics)
        self.housekeeping.start()  # pruning, metrics; tells systemd we are ready
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
        if self.housekeeping is not None:
            await self.housekeeping.stop()
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
        self.scheduler.cfg, self.scheduler.signer = cfg, handler.signer
        if self.policy_server is not None:
            self.policy = PolicyServer(cfg, self.reader, self.clock)
        self.lmtp_gate.limit = cfg.lmtp.max_connections
        self.policy_gate.limit = cfg.policy.max_connections
        ensure_descriptors(cfg)
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
        if self._reminders_task is not None:
            await self.scheduler.stop()
            await self._reminders_task  # a post being stored commits first
        if self.delivery is not None:
            await self.delivery.stop()
        if self.worker is not None:
            await stop_worker(self.worker, self._worker_task, grace)
        if self.housekeeping is not None:
            await self.housekeeping.stop()
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


async def run_delivery(cfg: Config, from_serve: bool, metrics_file: Path | None = None) -> None:
    """``lmtpd deliver``: the delivery worker alone, until SIGTERM or the end of serve's pipe.

    With ``metrics_file``, its counters are written there for serve's metrics endpoint.
    """
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
            await loop.connect_read_pipe(lambda: WakePipe(worker.wake, stop.set), sys.stdin)
        task = loop.create_task(worker.run(), name="lmtpd-delivery")
        figures = loop.create_task(_write_counters(metrics_file), name="lmtpd-counters") if metrics_file else None
        log.info("delivery worker ready (process %d)", os.getpid())
        await asyncio.wait([asyncio.ensure_future(stop.wait()), task], return_when=asyncio.FIRST_COMPLETED)
        failed = task.done() and not stop.is_set()
        if failed:
            log.error("delivery worker ended unexpectedly: %r", task.exception())
        await stop_worker(worker, task, cfg.lmtp.shutdown_grace)
        if figures is not None:
            figures.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await figures
    if failed:
        raise SystemExit(1)


async def _write_counters(path: Path) -> None:
    """The worker's counters to serve's private directory, every few seconds and once more at the end."""
    try:
        while True:
            _save_counters(path)
            await asyncio.sleep(WORKER_METRICS_EVERY)
    finally:
        _save_counters(path)


def _save_counters(path: Path) -> None:
    try:
        counters.write_worker_file(path)
    except OSError as exc:
        log.warning("delivery worker metrics %s: %s", path, exc)


__all__ = ["Service", "ListenError", "StoreError"]
