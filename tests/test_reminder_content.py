"""What a reminder says and when it rests: Markdown with an HTML alternative, dates in the
list's language, a pause that ends by itself, a list's reminders alone.

A real SQLite file and the scheduler on an injected clock; the mail is parsed back as
members' programs would read it.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from email import message_from_bytes
from email.policy import default
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from lmtpd import reminder_admin, roster
from lmtpd.cli import main
from lmtpd.config import Config
from lmtpd.dates import LanguageError, check_language, date_values, locale_of
from lmtpd.reminder_admin import Schedule
from lmtpd.reminders import next_due
from lmtpd.runtime import open_runtime
from lmtpd.schedule import every
from lmtpd.store import connect_sync, open_database, transaction

from .helpers.club import rows

HOUR = 3600.0
BERLIN = ZoneInfo("Europe/Berlin")
MARKDOWN = "# Training\n\n**Bring your boots** on {weekday}, {date}.\n\n- water\n- <b>towel</b> & shin guards\n"


async def cli(cfg: Config, *args: str, input: str | None = None):
    """The command as an operator runs it (in a thread: it runs an event loop of its own)."""
    return await asyncio.to_thread(CliRunner().invoke, main, ["--config", str(cfg.source), *args], input=input)


async def on_db(cfg: Config, fn):
    db = await open_database(cfg.database)
    try:
        return await transaction(db, fn)
    finally:
        await db.close()


async def add(cfg: Config, now: float, subject: str, body: str, markdown: bool = False, list_name: str = "youth"):
    plan = Schedule("rrule", every("day 18:00"), "Europe/Berlin")
    rid, _ = await on_db(cfg, lambda db: reminder_admin.add(db, list_name, subject, body, plan, now, markdown))
    return rid


async def posted(cfg: Config, clock) -> list:
    """Run the scheduler once; the messages it stored, parsed."""
    async with open_runtime(cfg, clock) as rt:
        await rt.reminders().run_once()
    return [message_from_bytes(r[0], policy=default) for r in rows(cfg, "SELECT raw FROM messages ORDER BY id")]


# ------------------------------------------------------------------ Markdown


async def test_a_markdown_body_is_sent_as_written_and_as_html(club_config, clock):
    await add(club_config, clock(), "Training {weekday}", MARKDOWN, markdown=True)
    clock.advance(9 * HOUR + 1)  # Fri 2027-01-15 18:00:01 in Berlin
    [mail] = await posted(club_config, clock)
    assert mail.get_content_type() == "multipart/alternative"
    plain, html = mail.get_payload()
    assert plain.get_content_type() == "text/plain" and html.get_content_type() == "text/html"
    assert plain.get_content().replace("\r\n", "\n") == MARKDOWN.format(weekday="Friday", date="2027-01-15")
    page = html.get_content()
    assert "<h1>Training</h1>" in page and "<strong>Bring your boots</strong> on Friday, 2027-01-15." in page
    assert "<li>&lt;b&gt;towel&lt;/b&gt; &amp; shin guards</li>" in page  # raw HTML escaped, never passed on
    assert '<meta charset="utf-8">' in page and "<title>Training Friday</title>" in page
    assert mail["Auto-Submitted"] == "auto-generated" and mail["Subject"] == "Training Friday"
    # the copies' block (list headers, DKIM) was built from the same head
    block = rows(club_config, "SELECT headers FROM posts")[0][0]
    assert b"multipart/alternative" in block and b"List-Id:" in block


async def test_a_plain_body_stays_one_text_part(club_config, clock):
    await add(club_config, clock(), "Training", "# not a heading, just text\n")
    clock.advance(9 * HOUR + 1)
    [mail] = await posted(club_config, clock)
    assert mail.get_content_type() == "text/plain"
    assert mail.get_content() == "# not a heading, just text\r\n"


async def test_a_md_body_file_is_markdown_on_the_command_line(club_config, tmp_path):
    body = tmp_path / "training.md"
    body.write_text("*Boots* please\n", encoding="utf-8")
    added = await cli(club_config, "reminders", "add", "--list", "youth", "--subject", "Training",
                      "--every", "monday 18:00", "--body-file", str(body))  # fmt: skip
    assert added.exit_code == 0, added.output
    rid = int(added.output.split()[1])
    shown = json.loads((await cli(club_config, "reminders", "show", str(rid), "--json")).output)
    assert shown["markdown"] is True
    mail = message_from_bytes(shown["mail"].encode(), policy=default)
    assert [p.get_content_type() for p in mail.get_payload()] == ["text/plain", "text/html"]
    assert "<em>Boots</em> please" in mail.get_payload()[1].get_content()
    plain = await cli(club_config, "reminders", "add", "--list", "youth", "--subject", "T", "--every", "monday 18:00",
                      input="*Boots*\n")  # fmt: skip
    shown = json.loads((await cli(club_config, "reminders", "show", plain.output.split()[1], "--json")).output)
    assert shown["markdown"] is False and "multipart" not in shown["mail"]


# ---------------------------------------------------------------- languages


@pytest.mark.parametrize(
    "language, values",
    [
        ("de", {"date": "12. März 2027", "time": "19:00", "weekday": "Freitag", "month": "März"}),
        ("fr", {"date": "12 mars 2027", "time": "19:00", "weekday": "vendredi", "month": "mars"}),
        ("en", {"date": "March 12, 2027", "time": "7:00\u202fPM", "weekday": "Friday", "month": "March"}),
        (None, {"date": "2027-03-12", "time": "19:00", "weekday": "Friday", "month": "March"}),
        ("tlh", {"date": "2027-03-12", "time": "19:00", "weekday": "Friday", "month": "March"}),  # unknown: English
    ],
)
def test_dates_in_the_lists_language(language, values):
    at = datetime(2027, 3, 12, 19, 0, tzinfo=BERLIN)
    assert date_values("", at, locale_of(language)) == values | {"date_iso": "2027-03-12"}


def test_languages_are_checked():
    assert [check_language(v) for v in ("de", "fr", "en", "de-AT", " pt_BR ")] == ["de", "fr", "en", "de_AT", "pt_BR"]
    for bad in ("klingon", "xx", "d e", "../de", "de_XX"):
        with pytest.raises(LanguageError):
            check_language(bad)


async def test_a_german_list_gets_german_dates_in_subject_and_body(club_config, clock):
    result = await cli(club_config, "lists", "set", "youth", "--language", "de", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["language"] == "de"
    event = Schedule("event", "2027-01-20 19:00", "Europe/Berlin", offsets=("2h",))
    await on_db(club_config, lambda db: reminder_admin.add(db, "youth", "{event_weekday}, {event_date} um {event_time}",
                                                            "Treffen am {event_weekday}, {event_date}.\n", event,
                                                            clock()))  # fmt: skip
    clock.advance(5 * 24 * HOUR + 8 * HOUR)  # 20 January 17:00 in Berlin
    [mail] = await posted(club_config, clock)
    assert mail["Subject"] == "Mittwoch, 20. Januar 2027 um 19:00"
    assert mail.get_content() == "Treffen am Mittwoch, 20. Januar 2027.\r\n"
    bad = await cli(club_config, "lists", "set", "youth", "--language", "klingon")
    assert bad.exit_code != 0 and "unknown language" in bad.output
    reset = await cli(club_config, "lists", "set", "youth", "--language", "", "--json")
    assert json.loads(reset.output)["language"] is None


async def test_a_french_list_previews_in_french(club_config, clock):
    await on_db(club_config, lambda db: roster.set_list(db, "youth", {"language": "fr"}))
    rid = await add(club_config, clock(), "Entraînement {weekday} {date}", "{time}\n", markdown=True)
    preview = await on_db(club_config, lambda db: reminder_admin.preview(db, club_config, rid, clock()))
    mail = message_from_bytes(preview.encode(), policy=default)
    assert mail["Subject"] == "[youth] Entraînement vendredi 15 janvier 2027"
    assert '<html lang="fr">' in mail.get_payload()[1].get_content()


# ------------------------------------------------------------------- pauses


async def test_a_pause_until_a_date_resumes_by_itself_without_sending_what_it_missed(club_config, clock):
    rid = await add(club_config, clock(), "Training {date}", "Boots\n")  # daily 18:00 Berlin, from Fri 15 Jan
    paused = await cli(club_config, "reminders", "pause", str(rid), "--until", "2099-01-01")
    assert paused.exit_code == 0 and "paused until 2098-12-31T23:00:00Z" in paused.output
    assert (
        "paused until 2099-01-01 00:00 CET, then next=2099-01-01 18:00 CET"
        in (await cli(club_config, "reminders", "list")).output
    )
    at = await on_db(club_config, lambda db: reminder_admin.pause_until(db, rid, "2027-01-17", clock()))
    assert at == datetime(2027, 1, 17, tzinfo=BERLIN).timestamp()
    [row] = await on_db(club_config, lambda db: reminder_admin.listing(db, clock()))
    assert row["paused"] and row["paused_until"] == "2027-01-17 00:00 CET" and row["next"] == "2027-01-17 18:00 CET"
    clock.advance(9 * HOUR + 1)  # Friday 18:00: paused
    assert await posted(club_config, clock) == []
    clock.advance(24 * HOUR)  # Saturday 18:00: paused
    assert await posted(club_config, clock) == []
    clock.advance(6 * HOUR)  # Sunday 00:00:01: resumed, Saturday's (within the grace period) is not sent late
    assert await posted(club_config, clock) == []
    [row] = await on_db(club_config, lambda db: reminder_admin.listing(db, clock()))
    assert not row["paused"] and row["paused_until"] is None
    clock.advance(18 * HOUR)  # Sunday 18:00
    assert [m["Subject"] for m in await posted(club_config, clock)] == ["Training 2027-01-17"]
    assert [r[0] for r in rows(club_config, "SELECT outcome FROM reminder_occurrences")] == ["sent"]


async def test_the_scheduler_wakes_when_a_timed_pause_ends(club_config, clock):
    rid = await add(club_config, clock(), "Training", "Boots\n")
    await on_db(club_config, lambda db: reminder_admin.pause_until(db, rid, "2027-01-20 18:00", clock()))
    reader = connect_sync(club_config.database)
    try:
        assert next_due(reader) == datetime(2027, 1, 20, 18, tzinfo=BERLIN).timestamp()  # due exactly then: sent
    finally:
        reader.close()
    for bad in ("2027-01-01", "someday"):
        with pytest.raises(reminder_admin.ReminderError):
            await on_db(club_config, lambda db, bad=bad: reminder_admin.pause_until(db, rid, bad, clock()))
    await on_db(club_config, lambda db: reminder_admin.set_paused(db, rid, False))
    [row] = await on_db(club_config, lambda db: reminder_admin.listing(db, clock()))
    assert not row["paused"] and row["next"] == "2027-01-15 18:00 CET"


async def test_reminders_of_one_list(club_config, clock):
    youth = await add(club_config, clock(), "Y", "y\n")
    trainers = await add(club_config, clock(), "T", "t\n", list_name="trainers")
    listed = await cli(club_config, "reminders", "list", "--list", "trainers", "--json")
    assert [r["id"] for r in json.loads(listed.output)] == [trainers]
    assert [r["id"] for r in json.loads((await cli(club_config, "reminders", "list", "--json")).output)] == [
        youth,
        trainers,
    ]
    assert (await cli(club_config, "reminders", "list", "--list", "nobody")).output.strip() == "no reminders"
