"""Prometheus metrics: on a loopback HTTP port, or as a textfile for node_exporter.

The figures are read from the database at each scrape (see
:mod:`lmtpd.store.metrics`), so they cover the delivery worker's process and cron's
``queue flush`` as well as ``serve``, survive restarts, and cost the hot paths
nothing. A scrape is a handful of indexed queries on a connection of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server, write_to_textfile
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import counters
from .config import MetricsConfig
from .store import connect_sync
from .store import metrics as figures

log = logging.getLogger(__name__)

WINDOW = 86400.0  # "recent" posts and bounces: the last day


class QueueCollector(Collector):
    """Gauges from the queue, read when Prometheus asks."""

    def __init__(self, database: Path, clock: Callable[[], float] = time.time):
        self.database = database
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        db = connect_sync(self.database)
        try:
            yield from self._collect(db, now)
        finally:
            db.close()

    def _collect(self, db: sqlite3.Connection, now: float) -> Iterator[Metric]:
        copies = GaugeMetricFamily(
            "lmtpd_queue_copies",
            "Copies in the queue by state and kind (list post or report)",
            labels=["state", "kind"],
        )
        depth = 0
        for state, kind, n in figures.copies_by_state(db):
            copies.add_metric([state, kind], n)
            depth += n if state in ("pending", "held") else 0
        yield copies
        yield GaugeMetricFamily("lmtpd_queue_depth", "Copies not yet sent or failed (pending and held)", value=depth)
        oldest = figures.oldest_unsent(db)
        yield GaugeMetricFamily(
            "lmtpd_queue_oldest_copy_age_seconds",
            "Age of the oldest copy not yet sent or failed (0 when the queue is empty)",
            value=max(0.0, now - oldest) if oldest is not None else 0.0,
        )
        deferred = GaugeMetricFamily(
            "lmtpd_queue_deferred_copies",
            "Pending copies tried at least once, by the reply code of their last attempt",
            labels=["reply"],
        )
        for head, n in figures.deferred_by_reply(db):
            deferred.add_metric([head if head[:1].isdigit() else "other"], n)
        yield deferred
        posts = GaugeMetricFamily(
            "lmtpd_posts_last_day", "Posts accepted in the last 24 hours by list", labels=["list"]
        )
        for name, n in figures.posts_since(db, now - WINDOW):
            posts.add_metric([name], n)
        yield posts
        bounces = GaugeMetricFamily(
            "lmtpd_bounces_last_day", "Bounces received in the last 24 hours by reason", labels=["reason"]
        )
        for kind, n in figures.bounces_by_kind(db, now - WINDOW):
            bounces.add_metric([kind or "unprocessed"], n)
        yield bounces
        yield GaugeMetricFamily(
            "lmtpd_members_delivery_disabled",
            "Members whose delivery bounces disabled",
            value=figures.disabled_members(db),
        )
        size = self.database.stat().st_size if self.database.exists() else 0
        yield GaugeMetricFamily("lmtpd_database_size_bytes", "Size of the SQLite file (without its WAL)", value=size)


class EventCollector(Collector):
    """This process's counters (:mod:`lmtpd.counters`), plus the delivery worker's from its textfile."""

    def __init__(self, worker_file: Path | None = None):
        self.worker_file = worker_file

    def collect(self) -> Iterator[Metric]:
        theirs = counters.read_families(self.worker_file) if self.worker_file is not None else []
        yield from counters.merged(counters.REGISTRY.collect(), theirs)


def registry(
    database: Path, clock: Callable[[], float] = time.time, worker_file: Path | None = None
) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(QueueCollector(database, clock))
    reg.register(EventCollector(worker_file))
    return reg


def serve_http(cfg: MetricsConfig, reg: CollectorRegistry) -> Callable[[], None]:
    """Start the HTTP endpoint in a thread of its own; return what stops it."""
    host, _, port = cfg.listen.rpartition(":")
    server, thread = start_http_server(int(port), addr=host.strip("[]"), registry=reg)
    log.info("metrics on http://%s/metrics", cfg.listen)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop


def write_textfile(path: Path, reg: CollectorRegistry) -> None:
    """Write atomically (prometheus_client writes a temporary file and renames it)."""
    write_to_textfile(str(path), reg)
    os.chmod(path, 0o644)  # node_exporter runs as a user of its own


async def textfile_loop(cfg: MetricsConfig, reg: CollectorRegistry) -> None:
    """serve's task: the textfile again every ``interval`` seconds, until cancelled."""
    assert cfg.textfile is not None
    while True:
        try:
            await asyncio.to_thread(write_textfile, cfg.textfile, reg)
        except (OSError, sqlite3.Error) as exc:
            log.warning("metrics textfile %s: %s", cfg.textfile, exc)
        await asyncio.sleep(cfg.interval)
