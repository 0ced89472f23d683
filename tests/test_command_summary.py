"""The administrator's daily summary of changes by mail: yesterday's, exactly once per day."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmtpd import command_summary
from lmtpd.cli import main
from lmtpd.config import ConfigError, load
from lmtpd.housekeeping import Housekeeping
from lmtpd.queue import new_queue_id

from .helpers.club import new_club, rows, write_config
from .helpers.commandclub import AUTH, CommandClub, command_mail
from .helpers.sink import Sink
from .helpers.timing import Clock, eventually

DAY = 86400


@pytest.fixture
async def club(tmp_path: Path, sink: Sink, clock: Clock) -> AsyncIterator[CommandClub]:
    extra = AUTH + "[commands]\ndaily_summary = true\n"
    cfg = await new_club(tmp_path, "127.0.0.1:8024", relay_port=sink.port, extra=extra)
    c = CommandClub(cfg, sink, clock)
    await c.open()
    yield c
    await c.close()


def test_the_summary_is_of_yesterday_in_local_time():
    noon = 1_800_000_000.0  # 2027-01-15
    assert command_summary.summary_day(noon) == date(2027, 1, 14)
    start, end = command_summary.day_bounds(date(2027, 1, 14))
    assert end - start == DAY and start < noon - DAY < end


def test_owners_must_be_addresses(tmp_path: Path):
    path = write_config(tmp_path, "127.0.0.1:8024", extra='[commands]\nowners = ["not an address"]\n')
    with pytest.raises(ConfigError, match=r"\[commands\] owners"):
        load(path)


async def summarise(club: CommandClub) -> command_summary.Outcome:
    cfg, now = club.cfg, club.clock()
    done = await club.runtime.writer.submit(lambda db: command_summary.send_summary(db, cfg, now, new_queue_id))
    await club.deliver()
    return done


async def test_yesterdays_changes_reach_the_administrator_once(club: CommandClub):
    await club.send(command_mail(subject="leave youth", proven=True))
    anna = "Anna <anna@example.net>"
    await club.send(command_mail(anna, subject="pause", proven=True), mail_from="anna@example.net")
    await club.send(command_mail(anna, subject="status"), mail_from="anna@example.net")  # no change
    await club.send(command_mail(subject="join youth"))  # unproven: asked, not done yet
    club.clock.advance(DAY)
    done = await summarise(club)
    assert done.changes == 2 and done.queue_id and not done.sent_before
    [report] = club.answers("admin@myclub.org")
    assert report["Auto-Submitted"] == "auto-generated"
    text = report.get_content()
    assert "bob@example.net  leave youth: You left youth@myclub.org." in text
    assert "anna@example.net  pause: Paused" in text
    assert "status" not in text and "join" not in text
    # a second run the same day (serve's next look, or cron) sends nothing
    again = await summarise(club)
    assert again.sent_before and again.queue_id is None
    assert len(club.answers("admin@myclub.org")) == 1
    logged = [tuple(r) for r in rows(club.cfg, "SELECT day, changes FROM command_summaries")]
    assert logged == [("2027-01-15", 2)]


async def test_a_quiet_day_is_recorded_and_sends_nothing(club: CommandClub):
    done = await summarise(club)
    assert done.changes == 0 and done.queue_id is None and not done.sent_before
    assert club.answers("admin@myclub.org") == []
    assert rows(club.cfg, "SELECT count(*) FROM command_summaries")[0][0] == 1


async def test_serve_and_cron_send_it_once_between_them(club: CommandClub):
    await club.send(command_mail(subject="leave youth", proven=True))
    club.clock.advance(DAY)
    keeper = Housekeeping(club.cfg, club.runtime.writer, club.clock)
    keeper.start()
    try:
        await eventually(lambda: rows(club.cfg, "SELECT count(*) FROM command_summaries")[0][0] == 1, 10, "a summary")
    finally:
        await keeper.stop()
    await club.deliver()
    assert len(club.answers("admin@myclub.org")) == 1
    await club.close()  # cron's run, on the real clock: its yesterday once, then "sent before"
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["--config", str(club.cfg.source), "commands", "summary", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["day"] != "2027-01-15"  # the real yesterday; the clock's was done by serve
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["--config", str(club.cfg.source), "commands", "summary"]
    )
    assert "sent before" in result.output
    await club.open()
