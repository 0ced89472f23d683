"""What ``serve`` does besides mail: pruning, metrics, and telling systemd it is alive.

Each is a task on serve's event loop (the metrics endpoint a thread), started after
the listeners and stopped before the writer closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from . import command_summary, metrics, retention, sdnotify
from .config import Config
from .queue import new_queue_id
from .store import Writer

log = logging.getLogger(__name__)


class Housekeeping:
    def __init__(self, cfg: Config, writer: Writer, clock: Callable[[], float], worker_metrics: Path | None = None):
        self.cfg = cfg
        self.worker_metrics = worker_metrics
        self.writer = writer
        self.clock = clock
        self.tasks: list[asyncio.Task[None]] = []
        self._stop_http: Callable[[], None] | None = None

    def start(self) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        r = cfg.retention
        if r.copies_days or r.posts_days or r.bounces_days or r.logs_days:
            self.tasks.append(loop.create_task(retention.run(self.writer, r, self.clock), name="lmtpd-retention"))
        if cfg.metrics.listen or cfg.metrics.textfile:
            reg = metrics.registry(cfg.database, self.clock, self.worker_metrics)
            if cfg.metrics.listen:
                self._stop_http = metrics.serve_http(cfg.metrics, reg)
            if cfg.metrics.textfile:
                self.tasks.append(loop.create_task(metrics.textfile_loop(cfg.metrics, reg), name="lmtpd-metrics"))
        if cfg.commands.daily_summary:
            summary = command_summary.run(self.writer, cfg, self.clock, new_queue_id)
            self.tasks.append(loop.create_task(summary, name="lmtpd-command-summary"))
        interval = sdnotify.watchdog_interval()
        if interval:
            self.tasks.append(loop.create_task(_watchdog(interval), name="lmtpd-watchdog"))
        sdnotify.notify("READY=1\nSTATUS=accepting mail")

    async def stop(self) -> None:
        sdnotify.notify("STOPPING=1")
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()
        if self._stop_http is not None:
            await asyncio.to_thread(self._stop_http)
            self._stop_http = None


async def _watchdog(interval: float) -> None:
    """WATCHDOG=1 while the event loop turns: a loop stuck for WatchdogSec gets serve restarted."""
    while True:
        sdnotify.notify("WATCHDOG=1")
        await asyncio.sleep(interval)
