"""Administrators by mail: add/remove with the proof rules of every change, and reminders <list>."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lmtpd import commands, policy, reminder_admin, roster
from lmtpd.store import connect_sync, open_database, transaction

from .helpers.club import new_club, rows
from .helpers.commandclub import AUTH, CommandClub, command_mail
from .helpers.sink import Sink
from .helpers.timing import Clock

OWNERS = '[commands]\nowners = ["dave@example.com", "Boss@Example.org"]\n'


@pytest.fixture
async def club(tmp_path: Path, sink: Sink, clock: Clock) -> AsyncIterator[CommandClub]:
    cfg = await new_club(tmp_path, "127.0.0.1:8024", relay_port=sink.port, extra=AUTH + OWNERS)
    db = await open_database(cfg.database)
    try:
        await transaction(db, lambda db: roster.set_list(db, "trainers", {"moderators": "carla@example.com"}))
    finally:
        await db.close()
    c = CommandClub(cfg, sink, clock)
    await c.open()
    yield c
    await c.close()


@pytest.mark.parametrize(
    ("line", "arg"),
    [
        ("add youth erik@example.org Erik Larsen", "youth erik@example.org Erik Larsen"),
        ("ADD Youth <Erik@Example.org>", "youth <erik@example.org>"),
        ("remove youth erik@example.org.", "youth erik@example.org"),
        ("reminders Youth", "youth"),
    ],
)
def test_admin_command_lines(line: str, arg: str):
    cmd = commands.parse_line(line)
    assert cmd is not None and cmd.arg == arg


async def test_a_proven_owner_adds_and_removes_by_mail(club: CommandClub):
    # dave is a member of no list, but an owner: proven by the trusted Authentication-Results
    mail = command_mail("Dave <dave@example.com>", "youth-request@myclub.org", "add erik@example.org Erik Larsen")
    raw = mail.replace(b"From:", b"Authentication-Results: mx.myclub.org; dkim=pass header.d=example.com\r\nFrom:")
    assert (await club.send(raw, mail_from="dave@example.com")).startswith("250")
    assert club.lists_of("erik@example.org") == ["youth"]
    assert rows(club.cfg, "SELECT name FROM members WHERE address = 'erik@example.org'")[0][0] == "Erik Larsen"
    [answer] = club.answers("dave@example.com")
    assert "Added erik@example.org to youth@myclub.org (new in the club)." in answer.get_content()
    remove = raw.replace(b"add erik@example.org Erik Larsen", b"remove youth erik@example.org")
    await club.send(remove, mail_from="dave@example.com")
    assert club.lists_of("erik@example.org") == []
    assert "Removed erik@example.org from youth" in club.answers("dave@example.com")[-1].get_content()
    assert club.sink.to("erik@example.org") == []  # nobody else is mailed by an administrator's command


async def test_an_unproven_add_waits_for_the_owners_own_confirmation(club: CommandClub):
    raw = command_mail("Dave <dave@example.com>", "lists@myclub.org", "add trainers erik@example.org",
                       extra="Reply-To: eve@example.org\r\n")  # fmt: skip
    await club.send(raw, to="lists@myclub.org", mail_from="dave@example.com")
    assert club.lists_of("erik@example.org") == []
    [ask] = club.answers("dave@example.com")
    assert ask["Subject"].startswith("confirm ") and "add trainers erik@example.org" in ask.get_content()
    assert club.sink.to("eve@example.org") == []
    to = str(ask["Reply-To"]).strip("<>")
    await club.send(command_mail("dave@example.com", to, "Re: confirm"), to=to, mail_from="dave@example.com")
    assert club.lists_of("erik@example.org") == ["trainers"]
    assert "Added erik@example.org to trainers" in club.answers("dave@example.com")[-1].get_content()


async def test_a_moderator_administers_their_list_only_and_members_none(club: CommandClub):
    carla = "Carla <carla@example.com>"
    proof = b"Authentication-Results: mx.myclub.org; dkim=pass header.d=example.com\r\n"
    for line in ("add trainers erik@example.org", "add youth fred@example.org"):
        await club.send(proof + command_mail(carla, "lists@myclub.org", line), "lists@myclub.org", "carla@example.com")
    assert club.lists_of("erik@example.org") == ["trainers"]
    assert rows(club.cfg, "SELECT count(*) FROM members WHERE address = 'fred@example.org'")[0][0] == 0
    assert "only the list's administrators may add" in club.answers("carla@example.com")[-1].get_content()
    await club.send(command_mail(subject="remove youth anna@example.net", proven=True))
    assert club.lists_of("anna@example.net") == ["trainers", "youth"]
    assert "send 'leave youth'" in club.answers()[-1].get_content()
    await club.send(command_mail(subject="remove me please"))  # unproven, but nothing to confirm: answered at once
    answer = club.answers()[-1]
    assert not answer["Subject"].startswith("confirm") and "To leave a list yourself" in answer.get_content()
    await club.send(proof + command_mail(carla, "lists@myclub.org", "add trainers admin@myclub.org"),
                    "lists@myclub.org", "carla@example.com")  # fmt: skip
    assert "club domain" in club.answers("carla@example.com")[-1].get_content()


async def test_an_owner_who_is_no_member_is_let_in_and_answered_as_a_guest(club: CommandClub):
    reader = connect_sync(club.cfg.database)
    try:
        for sender, expected in [("boss@example.org", "DUNNO"), ("eve@example.org", "550 5.7.1"),
                                 ("carla@example.com", "DUNNO")]:  # fmt: skip
            req = {"request": "smtpd_access_policy", "sender": sender, "recipient": "lists@myclub.org"}
            assert policy.decide(req, reader, club.cfg, club.clock()).startswith(expected), sender
    finally:
        reader.close()
    boss = "Boss <boss@example.org>"
    await club.send(command_mail(boss, "lists@myclub.org", "status"), "lists@myclub.org", "boss@example.org")
    assert "not a member of the club" in club.answers("boss@example.org")[-1].get_content()
    await club.send(command_mail(boss, "lists@myclub.org", "add youth erik@example.org"), "lists@myclub.org",
                    "boss@example.org")  # fmt: skip
    [ask] = club.answers("boss@example.org")[1:]
    to = str(ask["Reply-To"]).strip("<>")
    await club.send(command_mail(boss, to, "Re: confirm"), to=to, mail_from="boss@example.org")
    assert club.lists_of("erik@example.org") == ["youth"]
    assert rows(club.cfg, "SELECT member_id FROM posts WHERE kind = 'reply'")[0][0] is None
    reply = await club.send(command_mail("Eve <eve@example.org>", "lists@myclub.org", "add youth x@example.org"),
                            "lists@myclub.org", "eve@example.org")  # fmt: skip
    assert reply.startswith("550 5.7.1")


async def test_reminders_of_a_list_with_their_next_occurrence(club: CommandClub):
    db = await open_database(club.cfg.database)
    plan = reminder_admin.Schedule("cron", "0 19 * * 2", "Europe/Berlin")
    try:
        await transaction(db, lambda db: reminder_admin.add(db, "youth", "Training tonight", "", plan, club.clock()))
    finally:
        await db.close()
    await club.send(command_mail(subject="reminders"))
    text = club.answers()[-1].get_content()
    assert "Reminders of youth@myclub.org" in text and "Training tonight" in text
    assert "2027-01-19 19:00 CET" in text and "cron 0 19 * * 2" in text  # the clock is 2027-01-15
    anna = "Anna <anna@example.net>"
    to = "lists@myclub.org"
    await club.send(command_mail(anna, to, "reminders trainers"), to, "anna@example.net")
    assert "trainers has no scheduled reminders" in club.answers("anna@example.net")[-1].get_content()
    await club.send(command_mail(subject="reminders trainers"))  # bob is no member of trainers
    assert "shown to the members of the list only" in club.answers()[-1].get_content()
    # dave is no member of youth, but an owner: he sees them
    await club.send(command_mail("Dave <dave@example.com>", subject="reminders youth"), mail_from="dave@example.com")
    assert "Training tonight" in club.answers("dave@example.com")[-1].get_content()


async def test_a_lists_administrator_pauses_and_resumes_a_reminder_by_mail(club: CommandClub):
    db = await open_database(club.cfg.database)
    plan = reminder_admin.Schedule("cron", "0 19 * * 2", "Europe/Berlin")
    try:
        await transaction(db, lambda db: reminder_admin.add(db, "trainers", "Trainers meet", "", plan, club.clock()))
    finally:
        await db.close()
    (reminder_id,) = [r[0] for r in rows(club.cfg, "SELECT id FROM reminders")]
    paused = lambda: rows(club.cfg, "SELECT paused FROM reminders")[0][0]  # noqa: E731
    carla = "Carla <carla@example.com>"  # the moderator of trainers, proven by our MTA's verdict
    mail = command_mail(carla, "trainers-request@myclub.org", f"pause reminder {reminder_id}")
    proven = mail.replace(b"From:", b"Authentication-Results: mx.myclub.org; dkim=pass header.d=example.com\r\nFrom:")
    await club.send(proven, "trainers-request@myclub.org", "carla@example.com")
    assert paused() == 1
    assert "paused: it is not posted until resumed" in club.answers("carla@example.com")[-1].get_content()
    await club.send(proven.replace(b"pause reminder", b"resume reminder"), "trainers-request@myclub.org",
                    "carla@example.com")  # fmt: skip
    assert paused() == 0
    # unproven: only a confirmation to the sender's own address, nothing paused
    await club.send(command_mail(subject=f"pause reminder {reminder_id}"))
    assert paused() == 0 and "could not be proven" in club.answers()[-1].get_content()
    # proven, but bob administers nothing: refused, without saying whether it exists
    bob = command_mail(subject=f"pause reminder {reminder_id}").replace(
        b"From:", b"Authentication-Results: mx.myclub.org; dkim=pass header.d=example.net\r\nFrom:"
    )
    await club.send(bob)
    assert paused() == 0
    assert "no such reminder among the lists you administer" in club.answers()[-1].get_content()
