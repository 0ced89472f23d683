"""Reminders as members receive them: posted once per occurrence, through the list's pipeline.

A real SQLite file, lmtpd's service on this loop with an injected clock, the sink as
the smarthost; the scheduler is run by hand where the clock moves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from email import message_from_bytes
from email.policy import default

import pytest
from click.testing import CliRunner

from lmtpd import reminder_admin
from lmtpd.cli import main
from lmtpd.config import Config, ConfigError, load
from lmtpd.reminder_admin import Schedule
from lmtpd.runtime import open_runtime
from lmtpd.schedule import every as readable
from lmtpd.store import open_database, transaction

from .helpers.club import DATA, rows
from .helpers.sink import Sink

YOUTH = {"anna@example.net", "bob@example.net", "carla@example.com"}
HOUR = 3600.0


async def add(cfg: Config, now: float, schedule: Schedule, subject: str = "Training {weekday} {time}",
              body: str = "Bring your boots. Grüße!\n", list_name: str = "youth") -> int:  # fmt: skip
    db = await open_database(cfg.database)
    try:
        rid, _ = await transaction(db, lambda db: reminder_admin.add(db, list_name, subject, body, schedule, now))
    finally:
        await db.close()
    return rid


def every(text: str, tz: str = "Europe/Berlin") -> Schedule:
    return Schedule("rrule", readable(text), tz)


async def test_an_occurrence_reaches_every_active_member_once_with_list_headers(service, club_config, clock, sink):
    # 1_800_000_000 is Fri 2027-01-15 08:00 UTC (09:00 in Berlin)
    rid = await add(club_config, clock(), every("day 18:00"))
    assert await service.scheduler.run_once() == []  # not due yet
    clock.advance(9 * HOUR + 1)  # 18:00:01 in Berlin
    done = await service.scheduler.run_once()
    assert [(d.reminder_id, d.outcome) for d in done] == [(rid, "sent")]
    await sink.wait_for(3)
    await asyncio.sleep(0.2)
    assert {r.rcpt for r in sink.received} == YOUTH and len(sink.received) == 3
    copy = message_from_bytes(sink.received[0].data, policy=default)
    assert copy["Subject"] == "[youth] Training Friday 18:00"
    assert copy["From"].addresses[0].addr_spec == "youth@myclub.org"
    assert copy["List-Id"] == '"Youth section" <youth.myclub.org>'
    assert copy["Auto-Submitted"] == "auto-generated"
    assert copy.get_content() == "Bring your boots. Grüße!\r\n"
    assert sink.received[0].mail_from.startswith("youth-bounces+")  # VERP, as a post
    assert await service.scheduler.run_once() == []  # recorded: never again
    assert [tuple(r) for r in rows(club_config, "SELECT reminder_id, outcome FROM reminder_occurrences")] == [
        (rid, "sent")
    ]
    assert rows(club_config, "SELECT count(*) FROM quota_use")[0][0] == 0  # no member's quota


async def test_two_processes_that_both_try_post_once(club_config, clock):
    await add(club_config, clock(), every("day 18:00"))
    clock.advance(9 * HOUR)
    async with open_runtime(club_config, clock) as a, open_runtime(club_config, clock) as b:
        results = await asyncio.gather(*(rt.reminders().run_once() for rt in (a, b, a, b)))
    posted = [d for done in results for d in done if d.queue_id]
    assert len(posted) == 1
    assert rows(club_config, "SELECT count(*) FROM posts")[0][0] == 1
    assert rows(club_config, "SELECT count(*) FROM deliveries")[0][0] == 3


async def test_after_downtime_recent_occurrences_are_late_and_old_ones_skipped(club_config, clock, caplog):
    await add(club_config, clock(), every("day 18:00"))
    clock.advance(37 * HOUR)  # Sat 22:00 in Berlin: Friday's 18:00 missed by 28 h, Saturday's by 4 h
    caplog.set_level(logging.INFO)
    async with open_runtime(club_config, clock) as rt:
        done = await rt.reminders().run_once()
    assert [d.outcome for d in done] == ["skipped", "late"]
    assert "skipped: missed by 28.0 h" in caplog.text and "late by 240 min" in caplog.text
    assert rows(club_config, "SELECT count(*) FROM deliveries")[0][0] == 3  # one post only


async def test_a_paused_reminder_posts_nothing_and_resumes_from_the_next_occurrence(club_config, clock):
    rid = await add(club_config, clock(), every("day 18:00"))
    db = await open_database(club_config.database)
    await transaction(db, lambda db: reminder_admin.set_paused(db, rid, True))
    clock.advance(9 * HOUR)
    async with open_runtime(club_config, clock) as rt:
        assert await rt.reminders().run_once() == []
    await transaction(db, lambda db: reminder_admin.set_paused(db, rid, False))
    await db.close()
    async with open_runtime(club_config, clock) as rt:
        assert [d.outcome for d in await rt.reminders().run_once()] == ["sent"]  # within the grace period


async def test_event_reminders_name_the_event_time(club_config, clock):
    event = Schedule("event", "2027-01-20 19:00", "Europe/Berlin", offsets=("1d", "2h"))
    await add(club_config, clock(), event, subject="Meeting on {event_date} at {event_time}", body="{list}: see you\n")
    clock.advance(5 * 24 * HOUR + 9 * HOUR)  # 20 January 18:00 in Berlin: the day-before one 23 h late
    async with open_runtime(club_config, clock) as rt:
        done = await rt.reminders().run_once()
    assert [d.outcome for d in done] == ["skipped", "late"]
    subject = rows(club_config, "SELECT subject FROM messages")
    assert [r[0] for r in subject] == ["Meeting on 2027-01-20 at 19:00"]


async def test_reminders_that_will_not_post_are_reported(club_config, clock, tmp_path):
    rid = await add(club_config, clock(), Schedule("at", "2027-01-15 12:00", "Europe/Berlin"))
    keep = await add(club_config, clock(), every("day 18:00"), list_name="trainers")
    db = await open_database(club_config.database)
    now = clock() + 4 * HOUR
    listing = {r["id"]: r for r in await reminder_admin.listing(db, now)}
    assert listing[rid]["problems"] == ["will never fire again"]
    assert listing[keep]["problems"] == [] and listing[keep]["next"] == "2027-01-15 18:00 CET"
    await db.execute("DELETE FROM lists WHERE name = 'trainers'")
    lines = await reminder_admin.problem_lines(db, now)
    await db.close()
    assert f"reminder {keep} (trainers): list trainers does not exist" in lines
    result = await cli(club_config, "check-config")
    assert result.exit_code == 0 and "list trainers does not exist" in result.output


async def test_importing_a_calendar_again_replaces_its_events(club_config, clock):
    text = (DATA / "reminders" / "training.ics").read_text()
    db = await open_database(club_config.database)
    try:
        first = await transaction(
            db, lambda db: reminder_admin.import_calendar(db, "youth", text, ("1d",), "Europe/Berlin", clock())
        )
        moved = text.replace("20270312T180000Z", "20270313T100000Z").replace("20270312T200000Z", "20270313T120000Z")
        again = await transaction(
            db, lambda db: reminder_admin.import_calendar(db, "youth", moved, ("1d",), "Europe/Berlin", clock())
        )
        listing = await reminder_admin.listing(db, clock())
    finally:
        await db.close()
    assert len(first["added"]) == 2 and sorted(again["updated"]) == sorted(first["added"]) and not again["added"]
    assert len(listing) == 2
    agm = next(r for r in listing if r["subject"].startswith("Annual meeting"))
    assert agm["next"] == "2027-03-12 11:00 CET"  # the day before the moved meeting (10:00 UTC)


async def cli(cfg: Config, *args: str, input: str | None = None):
    """The command as an operator runs it (in a thread: it runs an event loop of its own)."""
    return await asyncio.to_thread(CliRunner().invoke, main, ["--config", str(cfg.source), *args], input=input)


async def test_command_line(club_config, sink: Sink):
    added = await cli(club_config, "reminders", "add", "--list", "youth", "--subject", "Training {date}",
                "--every", "monday 18:00", "--skip", "2030-12-30", "--timezone", "Europe/Berlin",
                input="Boots!\n")  # fmt: skip
    assert added.exit_code == 0, added.output
    rid = int(added.output.split()[1])
    listing = json.loads((await cli(club_config, "reminders", "list", "--json")).output)
    assert listing[0]["id"] == rid and re.fullmatch(r"\d{4}-\d\d-\d\d 18:00 CES?T", listing[0]["next"])
    shown = await cli(club_config, "reminders", "show", str(rid))
    assert shown.exit_code == 0 and shown.output.count("18:00 CE") == 5 and "List-Id:" in shown.output
    assert (await cli(club_config, "reminders", "pause", str(rid))).exit_code == 0
    assert "paused" in (await cli(club_config, "reminders", "list")).output
    assert (await cli(club_config, "reminders", "resume", str(rid))).exit_code == 0
    sent = await cli(club_config, "reminders", "send-now", str(rid))
    assert sent.exit_code == 0 and "queued as" in sent.output
    assert rows(club_config, "SELECT count(*) FROM deliveries WHERE state = 'pending'")[0][0] == 3
    assert (await cli(club_config, "reminders", "run")).output.endswith("0 reminder(s) posted\n")  # send-now is extra
    bad = await cli(club_config, "reminders", "add", "--list", "youth", "--subject", "x", "--at", "2001-01-01 10:00",
              input="x")  # fmt: skip
    assert bad.exit_code == 65 and "never fires" in bad.output
    nope = await cli(club_config, "reminders", "add", "--list", "nope", "--subject", "x", "--cron", "0 9 * * *")
    assert nope.exit_code == 65
    assert (await cli(club_config, "reminders", "remove", str(rid))).exit_code == 0
    assert (await cli(club_config, "reminders", "show", str(rid))).exit_code == 66


def test_reminders_configuration(tmp_path):
    base = 'domain = "myclub.org"\ndatabase = "x.db"\nadmin = "a@example.org"\n[lmtp]\nlisten = "127.0.0.1:8024"\n'
    path = tmp_path / "lmtpd.toml"
    path.write_text(base + '[reminders]\ntimezone = "Europe/Berlin"\ngrace = 3600\nsender = "club@myclub.org"\n')
    cfg = load(path)
    assert (cfg.reminders.timezone, cfg.reminders.grace, cfg.reminders.sender) == (
        "Europe/Berlin",
        3600,
        "club@myclub.org",
    )
    for bad, message in [
        ('timezone = "Europe/Atlantis"', "[reminders] timezone: unknown time zone"),
        ('sender = "club@example.org"', "[reminders] sender: must be an address of the club domain"),
        ("grace = -1", "[reminders] grace: must be at least 0"),
    ]:
        path.write_text(base + f"[reminders]\n{bad}\n")
        with pytest.raises(ConfigError, match=re.escape(message)):
            load(path)


async def test_a_renamed_list_keeps_its_reminders(club_config: Config):
    from lmtpd import roster

    plan = Schedule("cron", "0 19 * * 2", "Europe/Berlin")
    db = await open_database(club_config.database)
    try:
        await transaction(db, lambda db: reminder_admin.add(db, "youth", "Training", "", plan, 0.0))
        await transaction(db, lambda db: roster.rename_list(db, "youth", "juniors"))
    finally:
        await db.close()
    assert [r[0] for r in rows(club_config, "SELECT list_name FROM reminders")] == ["juniors"]
