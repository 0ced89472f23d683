"""Retention of the command log and the reminder log ([retention] logs_days): old entries
go, and never the reminder occurrences exactly-once rests on. Injected clock throughout."""

from __future__ import annotations

import dataclasses
import sqlite3

from lmtpd import reminder_admin, retention
from lmtpd.config import Config, RetentionConfig
from lmtpd.reminder_admin import Schedule
from lmtpd.runtime import open_runtime
from lmtpd.schedule import every
from lmtpd.store import commands as command_store
from lmtpd.store import open_database, transaction

from .helpers.club import rows
from .helpers.timing import Clock

DAY = 86400.0
HOUR = 3600.0


async def add_daily(cfg: Config, now: float) -> int:
    db = await open_database(cfg.database)
    try:
        schedule = Schedule("rrule", every("day 18:00"), "Europe/Berlin")
        rid, _ = await transaction(db, lambda db: reminder_admin.add(db, "youth", "Training", "Boots", schedule, now))
    finally:
        await db.close()
    return rid


def occurrences(cfg: Config) -> list[tuple[float, str]]:
    return [(r["due_at"], r["outcome"]) for r in rows(cfg, "SELECT due_at, outcome FROM reminder_occurrences")]


def test_the_log_cutoff_keeps_the_rate_limit_hour_and_zero_keeps_forever():
    assert retention.log_cutoff(RetentionConfig(logs_days=0), 100 * DAY) is None
    assert retention.log_cutoff(RetentionConfig(), 400 * DAY) == 35 * DAY  # a year by default
    assert retention.log_cutoff(RetentionConfig(logs_days=1), 100 * DAY) == 99 * DAY


async def test_old_log_entries_go_and_the_latest_occurrence_stays(club_config: Config, clock: Clock):
    cfg = dataclasses.replace(club_config, retention=RetentionConfig(logs_days=2, batch=1))  # batch 1: many batches
    rid = await add_daily(cfg, clock())  # Fri 2027-01-15 09:00 in Berlin: due daily at 18:00
    async with open_runtime(cfg, clock) as runtime:
        scheduler = runtime.reminders()
        posted = []
        clock.advance(9 * HOUR + 1)  # 18:00:01 in Berlin
        for _ in range(5):  # five evenings, one occurrence each
            posted += [d.outcome for d in await scheduler.run_once()]
            clock.advance(DAY)
        assert posted == ["sent"] * 5
        days = sorted(due for due, _ in occurrences(cfg))
        db = sqlite3.connect(cfg.database)
        with db:  # the command log: one entry a day old per day, and one of the last minutes
            for age in (10 * DAY, 5 * DAY, 3 * DAY, DAY, 60.0):
                command_store.log_command(db, clock() - age, "Q1", "anna@example.net", "youth-request@myclub.org",
                                          "help", "answered", True)  # fmt: skip
        db.close()

        assert retention.count(runtime.reader, cfg.retention, clock()) == retention.Pruned(
            command_log=3, reminder_log=3
        )
        pruned = await retention.prune(runtime.writer, cfg.retention, clock)
        assert pruned == retention.Pruned(command_log=3, reminder_log=3)
        assert sorted(due for due, _ in occurrences(cfg)) == days[3:]  # recorded in the last two days
        assert len(rows(cfg, "SELECT * FROM command_log")) == 2

        # years later, nothing posted since (the reminder was paused): the latest occurrence is all
        # the scheduler has to resume from, so it stays however old
        db = sqlite3.connect(cfg.database)
        with db:
            db.execute("UPDATE reminders SET paused = 1 WHERE id = ?", (rid,))
        db.close()
        clock.advance(3 * 365 * DAY)
        pruned = await retention.prune(runtime.writer, cfg.retention, clock)
        assert pruned == retention.Pruned(command_log=2, reminder_log=1)
        assert [due for due, _ in occurrences(cfg)] == [days[-1]]
        # unpaused, the scheduler resumes after it: stale occurrences are skipped, none posted twice
        db = sqlite3.connect(cfg.database)
        with db:
            db.execute("UPDATE reminders SET paused = 0 WHERE id = ?", (rid,))
        db.close()
        again = await scheduler.run_once()
        assert "sent" not in {d.outcome for d in again if d.due_at <= days[-1]}
        assert all(d.due_at > days[-1] for d in again)


async def test_a_send_now_occurrence_after_the_latest_is_never_pruned(club_config: Config, clock: Clock):
    cfg = dataclasses.replace(club_config, retention=RetentionConfig(logs_days=1))
    await add_daily(cfg, clock())
    async with open_runtime(cfg, clock) as runtime:
        clock.advance(9 * HOUR + 1)
        assert [d.outcome for d in await runtime.reminders().run_once()] == ["sent"]
        latest = occurrences(cfg)[0][0]
        db = sqlite3.connect(cfg.database)
        with db:  # an extra occurrence sent by hand after it, recorded long ago by the clock's measure
            db.execute(
                "INSERT INTO reminder_occurrences (reminder_id, due_at, outcome, queue_id, recorded_at)"
                " SELECT reminder_id, ?, 'manual', '', ? FROM reminder_occurrences",
                (latest + HOUR, latest + HOUR),
            )
        db.close()
        clock.advance(30 * DAY)
        assert await retention.prune(runtime.writer, cfg.retention, clock) == retention.Pruned()
        assert sorted(occurrences(cfg)) == [(latest, "sent"), (latest + HOUR, "manual")]
