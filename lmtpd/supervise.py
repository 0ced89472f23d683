"""The delivery worker's process, seen from both ends of the pipe between them.

``serve`` starts the worker as a child (:class:`DeliveryProcess`) and wakes it
through the child's stdin; the child reads that pipe (:class:`WakePipe`). Relaying
is steady CPU work that would otherwise take turns with the LMTP sessions Postfix
is waiting on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import suppress

from .delivery import Worker

log = logging.getLogger(__name__)

# glibc hands freed heap back to the kernel whenever it dips and faults it in again
# for the next copies: in a process as lean as the worker, three times the page
# faults and a fifth of its throughput. Keeping 16 MB of slack stops the churn.
DELIVERY_ENV = {"MALLOC_TOP_PAD_": str(16 << 20), **os.environ}
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # seconds before starting a dead worker again


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


class WakePipe(asyncio.Protocol):
    """The delivery worker's end of serve's pipe."""

    def __init__(self, wake: Callable[[], None], stop: Callable[[], None]):
        self.wake = wake
        self.stop = stop

    def data_received(self, data: bytes) -> None:
        self.wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop()
