"""Retention: what is done with goes after ``[retention]``'s days, in small batches.

``serve`` runs :func:`prune` every ``interval`` seconds and ``lmtpd db prune`` runs
it once. Each batch is one job of the group-commit writer touching at most
``batch`` rows of one kind, so an LMTP session waiting for its commit waits a few
milliseconds for pruning at most. What is still needed is never pruned: see
:mod:`lmtpd.store.retention` for the rules.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from .config import RetentionConfig
from .store import Writer, log_retention
from .store import retention as store

log = logging.getLogger(__name__)

DAY = 86400.0
LOG_FLOOR = 3600.0  # the command log's last hour is the rate limit's count: never pruned
PruneJob = Callable[[sqlite3.Connection, float, int], int]  # (db, before, limit) -> rows deleted
MAX_BATCHES = 10000  # per kind and pass: a pass always ends; the next one goes on
RECLAIM_PAGES = 256  # free pages handed back per batch, where auto_vacuum is incremental


@dataclass(frozen=True)
class Cutoffs:
    """Times before which each kind may go; None keeps that kind forever."""

    copies: float | None
    posts: float | None
    bounces: float | None


@dataclass
class Pruned:
    copies: int = 0
    posts: int = 0
    bounces: int = 0
    command_log: int = 0
    reminder_log: int = 0

    def __str__(self) -> str:
        logs = f", {self.command_log} command log entries, {self.reminder_log} reminder log entries"
        return f"{self.copies} copies, {self.posts} posts, {self.bounces} bounces" + logs

    @property
    def total(self) -> int:
        return self.copies + self.posts + self.bounces + self.command_log + self.reminder_log


def cutoffs(cfg: RetentionConfig, now: float) -> Cutoffs:
    """A pure function of the configuration and the time."""

    def before(days: int) -> float | None:
        return now - days * DAY if days else None

    return Cutoffs(before(cfg.copies_days), before(cfg.posts_days), before(cfg.bounces_days))


def log_cutoff(cfg: RetentionConfig, now: float) -> float | None:
    """When the command and reminder logs' entries may go; never within the rate limit's hour."""
    return min(now - cfg.logs_days * DAY, now - LOG_FLOOR) if cfg.logs_days else None


def count(db: sqlite3.Connection, cfg: RetentionConfig, now: float) -> Pruned:
    """What a prune at ``now`` would delete (``db prune --dry-run``)."""
    cut, logs = cutoffs(cfg, now), log_cutoff(cfg, now)
    return Pruned(
        copies=store.prune_copies(db, cut.copies, 0, dry_run=True) if cut.copies else 0,
        posts=store.prune_posts(db, cut.posts, 0, dry_run=True) if cut.posts else 0,
        bounces=store.prune_bounces(db, cut.bounces, 0, dry_run=True) if cut.bounces else 0,
        command_log=log_retention.prune_command_log(db, logs, 0, dry_run=True) if logs else 0,
        reminder_log=log_retention.prune_reminder_log(db, logs, 0, dry_run=True) if logs else 0,
    )


async def prune(writer: Writer, cfg: RetentionConfig, clock: Callable[[], float] = time.time) -> Pruned:
    """Delete, batch by batch, everything ``cfg`` says is old enough; return the counts."""
    now = clock()
    cut, logs = cutoffs(cfg, now), log_cutoff(cfg, now)
    done = Pruned()
    kinds: list[tuple[str, float | None, PruneJob]] = [
        ("copies", cut.copies, store.prune_copies),  # first: posts then carry fewer copies along
        ("posts", cut.posts, store.prune_posts),
        ("bounces", cut.bounces, store.prune_bounces),
        ("command_log", logs, log_retention.prune_command_log),
        ("reminder_log", logs, log_retention.prune_reminder_log),
    ]
    for name, before, job in kinds:
        if before is None:
            continue
        for _ in range(MAX_BATCHES):
            n = await writer.submit(lambda db, job=job, before=before: run_batch(db, job, before, cfg.batch))
            setattr(done, name, getattr(done, name) + n)
            if n < cfg.batch:
                break
            await asyncio.sleep(0)  # LMTP sessions' commits go between batches
    if cut.posts is not None:
        day = datetime.fromtimestamp(cut.posts).strftime("%Y-%m-%d")  # quota days are local days
        await writer.submit(lambda db: store.prune_quota_days(db, day))
    if done.total:
        log.info("retention: pruned %s", done)
    return done


def run_batch(db: sqlite3.Connection, job: PruneJob, before: float, n: int) -> int:
    """One batch of one kind, and the pages it freed handed back: one writer job."""
    deleted = job(db, before, n)
    if deleted:
        store.reclaim_space(db, RECLAIM_PAGES)
    return deleted


async def run(writer: Writer, cfg: RetentionConfig, clock: Callable[[], float]) -> None:
    """serve's pruning task: a pass every ``interval`` seconds until cancelled."""
    while True:
        try:
            await prune(writer, cfg, clock)
        except asyncio.CancelledError:
            raise
        except Exception:  # a failed pass must not end the service; the next one tries again
            log.exception("retention: pass failed")
        await asyncio.sleep(cfg.interval)
