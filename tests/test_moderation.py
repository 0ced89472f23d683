"""Moderation: held posts, decided by a moderator's reply, an author's confirmation or the operator."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from email import message_from_bytes
from email.utils import parseaddr
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmtpd import moderation, policy, roster
from lmtpd.addresses import MODERATE, parse_recipient
from lmtpd.cli import main
from lmtpd.config import Config, load
from lmtpd.message import read_headers
from lmtpd.runtime import open_runtime
from lmtpd.store import connect_sync, open_database, transaction

from .helpers import dnsserver, lmtpclient
from .helpers.club import lmtp_target, message, populate, rows, running, write_config
from .helpers.sink import Sink, start_sink
from .helpers.timing import Clock, eventually

YOUTH = ["anna@example.net", "bob@example.net", "carla@example.com"]


async def set_list(cfg: Config, name: str, **changes) -> None:
    db = await open_database(cfg.database)
    try:
        await transaction(db, lambda db: roster.set_list(db, name, changes))
    finally:
        await db.close()


async def post(cfg: Config, data: bytes, rcpt: str = "youth@myclub.org", sender: str = "") -> str:
    author = parseaddr(read_headers(data).author or "")[1]
    t = await lmtpclient.send(lmtp_target(cfg), sender or author or "x@example.org", [rcpt], data)
    return t.data[0]


def reply_mail(author: str, to: str, body: str = "Fine with me.\r\n", extra: str = "") -> bytes:
    return (
        f"From: {author}\r\nTo: {to}\r\nSubject: Re: held\r\nMessage-ID: <{abs(hash((author, to, body)))}@ex>\r\n"
        f"{extra}\r\n{body}"
    ).encode()


def token_address(received: bytes) -> str:
    """Where a notification or confirmation asks for the reply."""
    return parseaddr(message_from_bytes(received)["Reply-To"])[1]


def list_copies(sink: Sink) -> list[str]:
    return sorted(r.rcpt for r in sink.received if r.mail_from.startswith("youth-bounces"))


def cli(cfg: Config, *args: str):
    return CliRunner().invoke(main, ["--config", str(cfg.source), *args])


# ------------------------------------------------------------ pure functions


@pytest.mark.parametrize(
    "body, expected",
    [
        ("", (True, "")),
        ("Looks good.\r\n\r\n> reject this\r\n", (True, "")),
        ("\r\n> quoted\r\nReject: off topic, use the chat\r\n", (False, "off topic, use the chat")),
        ("REJECT\r\n", (False, "")),
    ],
)
def test_a_reply_approves_unless_its_first_own_line_says_reject(body: str, expected):
    assert moderation.reply_decision(reply_mail("c@example.com", "x@myclub.org", body)) == expected


def test_token_addresses_are_their_own_kind():
    rcpt, _ = parse_recipient("youth-moderate+0a1b2c@MyClub.org", "myclub.org")
    assert rcpt is not None and (rcpt.kind, rcpt.list_name, rcpt.extension) == (MODERATE, "youth", "0a1b2c")
    assert moderation.token_address("youth", "0a1b2c", "myclub.org") == "youth-moderate+0a1b2c@myclub.org"


# ------------------------------------------------------- a moderated list


@pytest.fixture
async def moderated(club_config: Config, service) -> Config:
    """youth is moderated by carla; lmtpd runs (``service``)."""
    await set_list(club_config, "youth", posting="moderated", moderators="carla@example.com")
    return club_config


async def test_a_held_post_is_released_to_every_member_once_by_the_moderators_reply(moderated: Config, sink: Sink):
    cfg = moderated
    reply = await post(cfg, message())
    assert reply.startswith("250 2.0.0 <youth@myclub.org>") and "held for a moderator" in reply, reply
    await sink.wait_for(1)
    notice = sink.received[0]
    assert notice.rcpt == "carla@example.com" and notice.mail_from == "<>"  # null sender
    msg = message_from_bytes(notice.data)
    assert msg["Subject"] == "Held for youth: Training on Saturday"
    assert msg["Auto-Submitted"] == "auto-generated"
    attached = [p for p in msg.walk() if p.get_content_type() == "message/rfc822"]
    assert attached and attached[0].get_payload(0)["Subject"] == "Training on Saturday"
    assert rows(cfg, "SELECT count(*) AS n FROM deliveries WHERE recipient != 'carla@example.com'")[0]["n"] == 0
    address = token_address(notice.data)
    assert address.startswith("youth-moderate+")

    answer = await post(cfg, reply_mail("Carla <carla@example.com>", address), address)
    assert answer.startswith("250") and "released to youth" in answer, answer
    await eventually(lambda: len(list_copies(sink)) == 3, 10, "the released post's copies")
    again = await post(cfg, reply_mail("Carla <carla@example.com>", address, "ok again\r\n"), address)
    assert again.startswith("550 5.1.1"), again
    await asyncio.sleep(0.3)
    assert list_copies(sink) == YOUTH
    copy = message_from_bytes(next(r.data for r in sink.received if r.rcpt == "bob@example.net"))
    assert copy["Subject"] == "[youth] Training on Saturday" and copy["List-Id"].endswith("<youth.myclub.org>")
    held = rows(cfg, "SELECT queue_id, state, decided_by FROM held")
    assert [(r["state"], r["decided_by"]) for r in held] == [("approved", "carla@example.com")]
    assert rows(cfg, "SELECT queue_id FROM messages WHERE author = 'anna@example.net'")[0][0] == held[0]["queue_id"]
    assert rows(cfg, "SELECT sum(posts) FROM quota_use")[0][0] == 1  # counted on release


async def test_only_a_moderator_decides_and_automatic_replies_decide_nothing(moderated: Config, sink: Sink):
    cfg = moderated
    await post(cfg, message())
    await sink.wait_for(1)
    address = token_address(sink.received[0].data)
    refused = await post(cfg, reply_mail("Bob <bob@example.net>", address), address)
    assert refused.startswith("550 5.7.1 <bob@example.net> is not a moderator of youth"), refused
    vacation = reply_mail("carla@example.com", address, "I am away.\r\n", "Auto-Submitted: auto-replied\r\n")
    assert "automatic mail, ignored" in await post(cfg, vacation, address)
    assert (await post(cfg, reply_mail("carla@example.com", address), address, sender="")).startswith("250")
    assert rows(cfg, "SELECT state FROM held")[0]["state"] == "approved"


async def test_a_rejection_tells_the_author_the_reason(moderated: Config, sink: Sink, caplog):
    caplog.set_level(logging.INFO, logger="lmtpd.moderation")
    cfg = moderated
    await post(cfg, message())
    await sink.wait_for(1)
    address = token_address(sink.received[0].data)
    answer = await post(cfg, reply_mail("carla@example.com", address, "reject: off topic here\r\n"), address)
    assert "rejected; the author is told why" in answer, answer
    await eventually(lambda: sink.to("anna@example.net"), 10, "the note to the author")
    note = message_from_bytes(sink.to("anna@example.net")[0].data)
    assert note["Subject"] == "Not posted to youth: Training on Saturday"
    assert "Reason:  off topic here" in note.get_payload(decode=True).decode()
    assert list_copies(sink) == []
    queue_id = rows(cfg, "SELECT queue_id FROM held")[0][0]
    assert f"{queue_id}: held for youth: author=<anna@example.net>" in caplog.text
    assert f"{queue_id}: rejected for youth by <carla@example.com>" in caplog.text


async def test_the_moderators_own_post_and_strangers(moderated: Config, sink: Sink):
    cfg = moderated
    direct = await post(cfg, message("Carla <carla@example.com>", "From the moderator"))
    assert direct.endswith("accepted"), direct
    stranger = await post(cfg, message("Eve <eve@example.org>", "spam"))
    assert stranger.startswith("550 5.7.1 <eve@example.org> is not a member"), stranger
    assert rows(cfg, "SELECT count(*) FROM held")[0][0] == 0


async def test_the_operator_lists_shows_and_approves(moderated: Config, service, sink: Sink):
    cfg = moderated
    await post(cfg, message())
    await post(cfg, message(subject="Second thought"))
    listed = json.loads((await asyncio.to_thread(cli, cfg, "held", "list", "--json")).output)
    assert [(r["subject"], r["state"], r["list_name"]) for r in listed] == [
        ("Training on Saturday", "held", "youth"),
        ("Second thought", "held", "youth"),
    ]
    shown = await asyncio.to_thread(cli, cfg, "held", "show", str(listed[0]["id"]))
    assert shown.exit_code == 0 and "reason: the list is moderated" in shown.output
    assert "See you at 10." in shown.output
    approved = await asyncio.to_thread(cli, cfg, "held", "approve", str(listed[0]["id"]))
    assert approved.exit_code == 0 and "released to youth" in approved.output, approved.output
    rejected = await asyncio.to_thread(cli, cfg, "held", "reject", str(listed[1]["id"]))
    assert rejected.exit_code == 0 and "rejected" in rejected.output
    twice = await asyncio.to_thread(cli, cfg, "held", "approve", str(listed[1]["id"]))
    assert "was rejected already" in twice.output
    missing = await asyncio.to_thread(cli, cfg, "held", "show", "999")
    assert missing.exit_code == 66
    service.worker.wake()
    await eventually(lambda: len(list_copies(sink)) == 3, 10, "the approved post's copies")
    assert json.loads((await asyncio.to_thread(cli, cfg, "held", "list", "--json")).output) == []


async def test_held_posts_expire_and_the_administrator_is_told(moderated: Config, service, sink: Sink, clock: Clock):
    cfg = moderated
    await post(cfg, message())
    async with open_runtime(cfg, ingest=False) as rt:
        early = await rt.writer.submit(lambda db: moderation.process(db, clock() + 13 * 86400, cfg))
        late = await rt.writer.submit(lambda db: moderation.process(db, clock() + 15 * 86400, cfg))
    assert early.expired == [] and len(late.expired) == 1
    assert rows(cfg, "SELECT state FROM held")[0]["state"] == "expired"
    clock.advance(15 * 86400)  # the summary was queued "then"
    service.worker.wake()
    await eventually(lambda: sink.to("admin@myclub.org"), 10, "the expiry summary")
    summary = message_from_bytes(sink.to("admin@myclub.org")[0].data)
    assert summary["Subject"] == "lmtpd: 1 held post(s) expired"


async def test_digest_mode_sends_one_mail_per_run(short_dir: Path, sink: Sink, clock: Clock):
    cfg = load(
        write_config(short_dir, f"unix:{short_dir}/lmtpd.sock", sink.port, extra='[moderation]\nnotify = "digest"\n')
    )
    await populate(cfg)
    await set_list(cfg, "youth", posting="moderated", moderators="carla@example.com bob@example.net")
    async with running(cfg, clock) as svc:
        await post(cfg, message())
        await post(cfg, message(subject="Another"))
        async with open_runtime(cfg, ingest=False) as rt:
            tick = await rt.writer.submit(lambda db: moderation.process(db, clock(), cfg))
            assert len(tick.digests) == 2
            again = await rt.writer.submit(lambda db: moderation.process(db, clock(), cfg))
            assert again.digests == []
        svc.worker.wake()
        await sink.wait_for(2)
        await asyncio.sleep(0.3)
    assert sorted(r.rcpt for r in sink.received) == ["bob@example.net", "carla@example.com"]
    text = message_from_bytes(sink.received[0].data).get_payload(decode=True).decode()
    assert text.count("decide: <youth-moderate+") == 2


# -------------------------------------------------------- announce lists


async def test_an_announce_list_takes_posts_from_its_moderators_only(club_config: Config, sink: Sink, clock: Clock):
    cfg = club_config
    await set_list(cfg, "youth", posting="announce", moderators="carla@example.com")
    async with running(cfg, clock):
        refused = await post(cfg, message())
        assert refused.startswith("550 5.7.1 only the moderators of youth may post to it"), refused
        assert (await post(cfg, message("carla@example.com", "News"))).endswith("accepted")
    reader = connect_sync(cfg.database)
    try:
        asks = {
            sender: policy.decide(
                {"request": "smtpd_access_policy", "sender": sender, "recipient": "youth@myclub.org"},
                reader,
                cfg,
                clock(),
            )  # fmt: skip
            for sender in ("anna@example.net", "carla@example.com", "eve@example.org")
        }
        token = policy.decide(
            {"request": "smtpd_access_policy", "sender": "eve@example.org",
             "recipient": "youth-moderate+00ff@myclub.org"}, reader, cfg, clock(),
        )  # fmt: skip
    finally:
        reader.close()
    assert asks["anna@example.net"].startswith("550 5.7.1 only the moderators of youth")
    assert asks["carla@example.com"] == "DUNNO"
    assert asks["eve@example.org"].startswith("550 5.7.1 <eve@example.org> is not a member")
    assert token.startswith("550 5.1.1")


# ------------------------------------------- unauthenticated: confirm by the author


@pytest.fixture
async def confirming(short_dir: Path, clock: Clock) -> AsyncIterator[tuple[Config, Sink]]:
    """Lists need DKIM or SPF; example.net's SPF allows no host, so nothing from 127.0.0.1 is proven."""
    zone = dnsserver.Zone()
    zone.add("example.net", "TXT", '"v=spf1 -all"')
    zone.add("example.com", "TXT", '"v=spf1 -all"')
    transport, port = await dnsserver.start(zone)
    far_end = await start_sink()
    extra = f'[dns]\nnameservers = ["127.0.0.1:{port}"]\ntimeout = 3\n[auth]\nrequire = "dkim-or-spf"\n'
    cfg = load(write_config(short_dir, f"unix:{short_dir}/lmtpd.sock", far_end.port, extra=extra))
    await populate(cfg)
    await set_list(cfg, "youth", unauthenticated="confirm")
    try:
        async with running(cfg, clock):
            yield cfg, far_end
    finally:
        far_end.close()
        transport.close()


async def test_an_unproven_post_goes_out_after_its_authors_confirmation(confirming):
    cfg, sink = confirming
    held = await post(cfg, message())
    assert "held for its author's confirmation" in held, held
    await sink.wait_for(1)
    ask = sink.received[0]
    assert ask.rcpt == "anna@example.net"
    assert message_from_bytes(ask.data)["Subject"] == "Did you send this to youth? Training on Saturday"
    address = token_address(ask.data)
    other = await post(cfg, reply_mail("bob@example.net", address), address)
    assert other.startswith("550 5.7.1 only <anna@example.net> can confirm"), other
    confirmed = await post(cfg, reply_mail("Anna <anna@example.net>", address, "yes, me\r\n"), address)
    assert "released to youth" in confirmed, confirmed
    await eventually(lambda: len(list_copies(sink)) == 3, 10, "the confirmed post's copies")
    assert list_copies(sink) == YOUTH
    trainers = await post(cfg, message(), "trainers@myclub.org")  # a "refuse" list refuses as before
    assert trainers.startswith("550 5.7.1 <anna@example.net> is not proven"), trainers


async def test_a_forgery_never_reaches_the_members(confirming):
    cfg, sink = confirming
    forged = message("Anna <anna@example.net>", "Send money", "Wire it to me.\r\n")
    assert "held for its author's confirmation" in await post(cfg, forged, sender="eve@example.org")
    await sink.wait_for(1)
    assert [r.rcpt for r in sink.received] == ["anna@example.net"]  # only the real Anna is asked
    guessed = await post(cfg, reply_mail("Anna <anna@example.net>", "youth-moderate+00@myclub.org"),
                         "youth-moderate+00@myclub.org", sender="eve@example.org")  # fmt: skip
    assert guessed.startswith("550 5.1.1"), guessed
    await asyncio.sleep(0.5)
    assert list_copies(sink) == []
    assert rows(cfg, "SELECT state FROM held")[0]["state"] == "confirm"


async def test_hold_mode_asks_the_moderator_instead(confirming):
    cfg, sink = confirming
    await set_list(cfg, "youth", unauthenticated="hold")
    assert "held for a moderator" in await post(cfg, message())
    await sink.wait_for(1)
    assert sink.received[0].rcpt == "admin@myclub.org"  # no moderators set: the administrator decides
    assert "not authenticated" in rows(cfg, "SELECT reason FROM held")[0]["reason"]
    await set_list(cfg, "youth", moderators="carla@example.com")
    address = token_address(sink.received[0].data)
    forged = await post(cfg, reply_mail("Carla <carla@example.com>", address), address)
    assert forged.startswith("550 5.7.1 <carla@example.com> is not proven"), forged  # a moderator's reply needs proof
    assert rows(cfg, "SELECT state FROM held")[0]["state"] == "held"


# ---------------------------------------------------------------- the lists


def test_lists_set_and_show_change_settings_in_place(tmp_path: Path):
    path = write_config(tmp_path, "127.0.0.1:8024", relay_port=1)

    def run(*args: str):
        return CliRunner().invoke(main, ["--config", str(path), *args])

    assert run("lists", "add", "youth", "--description", "Youth").exit_code == 0
    assert run("members", "add", "anna@example.net", "--list", "youth").exit_code == 0
    changed = run("lists", "set", "youth", "--posting", "moderated", "--moderators", "Carla@Example.COM, bob@x.org",
                  "--unauthenticated", "confirm", "--prefix", "", "--json")  # fmt: skip
    assert changed.exit_code == 0, changed.output
    shown = json.loads(run("lists", "show", "youth", "--json").output)
    assert shown == json.loads(changed.output)
    assert (shown["posting"], shown["unauthenticated"], shown["moderators"]) == (
        "moderated", "confirm", "Carla@example.com bob@x.org",
    )  # fmt: skip
    assert shown["description"] == "Youth" and shown["subject_prefix"] == "" and shown["members"] == 1
    assert run("lists", "set", "youth", "--moderators", "not-an-address").exit_code == 65
    assert run("lists", "set", "youth").exit_code == 64
    assert run("lists", "set", "nope", "--posting", "announce").exit_code == 65
    refused = run("lists", "remove", "youth")
    assert refused.exit_code == 65 and "1 membership(s)" in refused.output and "--yes" in refused.output
    removed = run("lists", "remove", "youth", "--yes")
    assert removed.exit_code == 0 and "1 membership(s) dropped" in removed.output
    assert run("lists", "add", "chat-moderate").exit_code == 65  # its own token addresses


async def test_lists_rename_keeps_members_history_and_held_posts(moderated: Config, sink: Sink):
    cfg = moderated
    await post(cfg, message("Bob <bob@example.net>", "Before"))
    await post(cfg, message("Carla <carla@example.com>", "Posted"))
    renamed = await asyncio.to_thread(cli, cfg, "lists", "rename", "youth", "juniors")
    assert renamed.exit_code == 0 and "is now juniors@myclub.org" in renamed.output, renamed.output
    taken = await asyncio.to_thread(cli, cfg, "lists", "rename", "trainers", "juniors")
    assert taken.exit_code == 65
    gone = await lmtpclient.send(lmtp_target(cfg), "anna@example.net", ["youth@myclub.org"], message())
    assert gone.rcpt[0].startswith("550 5.1.1")  # the old address is gone
    assert rows(cfg, "SELECT list_name FROM held")[0][0] == "juniors"
    assert {r[0] for r in rows(cfg, "SELECT list_name FROM posts WHERE kind = 'list'")} == {"juniors"}
    shown = json.loads((await asyncio.to_thread(cli, cfg, "lists", "show", "juniors", "--json")).output)
    assert shown["members"] == 3 and shown["posting"] == "moderated"


# ------------------------------------------------ second round: settings and people


def test_lists_add_takes_every_setting_lists_set_takes(tmp_path: Path):
    path = write_config(tmp_path, "127.0.0.1:8024", relay_port=1)

    def run(*args: str):
        return CliRunner().invoke(main, ["--config", str(path), *args])

    def options(*command: str) -> set[str]:
        cmd = main
        for name in command:
            cmd = cmd.commands[name]  # type: ignore[attr-defined]
        return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}

    set_only = {"--default-posts-per-day", "--default-auth", "--default-notify", "--default-max-size", "--json"}
    assert options("lists", "add") == options("lists", "set") - set_only
    added = run("lists", "add", "news", "--posting", "announce", "--moderators", "Mod@Example.ORG",
                "--unauthenticated", "hold", "--self-join", "--roster", "members", "--notify", "digest",
                "--prefix", "", "--posts-per-day", "3", "--reply-to", "list")  # fmt: skip
    assert added.exit_code == 0, added.output
    shown = json.loads(run("lists", "show", "news", "--json").output)
    assert {k: shown[k] for k in ("posting", "moderators", "unauthenticated", "self_join", "roster", "notify")} == {
        "posting": "announce", "moderators": "Mod@example.org", "unauthenticated": "hold", "self_join": True,
        "roster": "members", "notify": "digest",
    }  # fmt: skip
    assert (shown["subject_prefix"], shown["posts_per_day"], shown["reply_to"]) == ("", 3, "list")
    assert run("lists", "add", "chess").exit_code == 0
    plain = json.loads(run("lists", "show", "chess", "--json").output)
    assert (plain["posting"], plain["notify"], plain["self_join"], plain["subject_prefix"]) == (
        "members", None, False, None,
    )  # fmt: skip
    assert run("lists", "add", "bad", "--moderators", "not-an-address").exit_code == 65
    back = json.loads(run("lists", "set", "news", "--default-notify", "--json").output)
    assert back["notify"] is None


async def test_a_lists_own_notify_setting_wins_over_the_configured_one(club_config: Config, service, clock: Clock):
    cfg = club_config  # [moderation] notify = "each" (the default)
    await set_list(cfg, "youth", posting="moderated", moderators="carla@example.com", notify="digest")
    await set_list(cfg, "trainers", posting="moderated", moderators="carla@example.com")
    assert "held for a moderator" in await post(cfg, message())
    assert "held for a moderator" in await post(cfg, message(subject="For trainers"), "trainers@myclub.org")
    notified = {r["list_name"]: r["notified_at"] for r in rows(cfg, "SELECT list_name, notified_at FROM held")}
    assert notified["youth"] is None and notified["trainers"] is not None  # trainers: one mail at once
    async with open_runtime(cfg, ingest=False) as rt:
        tick = await rt.writer.submit(lambda db: moderation.process(db, clock(), cfg))
    assert len(tick.digests) == 1  # youth's post, in carla's digest
    assert rows(cfg, "SELECT count(*) FROM held WHERE notified_at IS NULL")[0][0] == 0


async def test_one_pause_whoever_set_it(club_config: Config, service, sink: Sink, clock: Clock):
    from lmtpd.store import commands as store_commands

    cfg = club_config
    paused = await asyncio.to_thread(cli, cfg, "members", "set", "bob@example.net", "--pause")
    assert paused.output.strip() == "bob@example.net: delivery paused"
    db = connect_sync(cfg.database)
    try:  # carla pauses herself by mail (the 'pause' command's store call), until a day to come
        carla = db.execute("SELECT id FROM members WHERE address = 'carla@example.com'").fetchone()[0]
        store_commands.set_pause(db, carla, clock(), clock() + 7 * 86400)
        db.commit()
    finally:
        db.close()
    listed = {
        r["address"]: r for r in json.loads((await asyncio.to_thread(cli, cfg, "members", "list", "--json")).output)
    }
    assert listed["bob@example.net"]["paused"]["by"] == "administrator"
    assert listed["carla@example.com"]["paused"]["by"] == "member" and listed["carla@example.com"]["paused"]["until"]
    assert listed["anna@example.net"]["paused"] is None and listed["bob@example.net"]["delivery_disabled"] is None
    assert (await post(cfg, message())).endswith("accepted")
    await eventually(lambda: len(list_copies(sink)) == 1, 10, "the copy to the one member not paused")
    resumed = await asyncio.to_thread(cli, cfg, "members", "set", "carla@example.com", "--resume")
    assert resumed.output.strip() == "carla@example.com: delivery resumed"  # the administrator ends a member's pause
    assert (await post(cfg, message(subject="Again"))).endswith("accepted")
    await eventually(lambda: len(list_copies(sink)) == 3, 10, "the second post's copies")
    await asyncio.sleep(0.3)
    assert list_copies(sink) == ["anna@example.net", "anna@example.net", "carla@example.com"]


async def test_a_moderator_outside_the_club_posts_and_decides(club_config: Config, service, sink: Sink, clock: Clock):
    cfg = club_config
    await set_list(cfg, "youth", posting="announce", moderators="mod@example.org")
    await set_list(cfg, "trainers", posting="moderated", moderators="mod@example.org")
    reader = connect_sync(cfg.database)
    try:
        asks = {
            (sender, rcpt): policy.decide(
                {"request": "smtpd_access_policy", "sender": sender, "recipient": rcpt}, reader, cfg, clock()
            )
            for sender in ("mod@example.org", "eve@example.org")
            for rcpt in ("youth@myclub.org", "trainers@myclub.org")
        }
    finally:
        reader.close()
    assert asks[("mod@example.org", "youth@myclub.org")] == "DUNNO"
    assert asks[("mod@example.org", "trainers@myclub.org")] == "DUNNO"
    assert asks[("eve@example.org", "youth@myclub.org")].startswith("550 5.7.1 <eve@example.org> is not a member")
    assert asks[("eve@example.org", "trainers@myclub.org")].startswith("550 5.7.1 <eve@example.org> is not a member")
    news = await post(cfg, message("Mod <mod@example.org>", "News from outside"))
    assert news.endswith("accepted"), news
    await eventually(lambda: len(list_copies(sink)) == 3, 10, "the moderator's post's copies")
    assert rows(cfg, "SELECT count(*) FROM quota_use")[0][0] == 0  # no member, no quota
    stranger = await post(cfg, message("Eve <eve@example.org>", "spam"))
    assert stranger.startswith("550 5.7.1 <eve@example.org> is not a member"), stranger
    held = await post(cfg, message("Anna <anna@example.net>", "For the trainers"), "trainers@myclub.org")
    assert "held for a moderator" in held, held
    await eventually(lambda: sink.to("mod@example.org"), 10, "the notification to the moderator")
    address = token_address(sink.to("mod@example.org")[0].data)
    approved = await post(cfg, reply_mail("Mod <mod@example.org>", address), address)
    assert "released to trainers" in approved, approved


async def test_a_moderator_outside_the_club_needs_the_same_proof(confirming):
    cfg, sink = confirming  # [auth] require = "dkim-or-spf"; nothing from here is proven
    await set_list(cfg, "youth", posting="announce", moderators="mod@example.org")
    refused = await post(cfg, message("Mod <mod@example.org>", "Forged news"))
    assert refused.startswith("550 5.7.1 <mod@example.org> is not proven"), refused
    assert rows(cfg, "SELECT count(*) FROM held")[0][0] == 0
    await asyncio.sleep(0.3)
    assert sink.received == []


async def test_the_administrators_old_pause_becomes_the_one_pause(tmp_path: Path, monkeypatch):
    from lmtpd.store import engine

    db = await engine.connect(tmp_path / "old.sqlite3")
    known = engine.migrations()
    ours = next(i for i, m in enumerate(known) if m.name == "moderation_round2")
    monkeypatch.setattr(engine, "migrations", lambda: known[:ours])
    await engine.upgrade(db)
    await db.executescript(
        """
        INSERT INTO members (address, name, created_at, delivery_disabled_at, disabled_reason)
            VALUES ('bob@example.net', 'Bob', 0, 100, 'paused by the administrator'),
                   ('dead@example.net', '', 0, 200, '5 bounces: 550 5.1.1 user unknown');
        INSERT INTO members (address, name, created_at, paused_at, paused_until)
            VALUES ('carla@example.com', 'Carla', 0, 300, 900);
        """
    )
    monkeypatch.setattr(engine, "migrations", lambda: known)
    await engine.upgrade(db)
    found = await engine.fetchall(
        db, "SELECT address, paused_at, paused_until, paused_by, delivery_disabled_at FROM members ORDER BY address"
    )
    await db.close()
    assert [tuple(r) for r in found] == [
        ("bob@example.net", 100, None, "admin", None),
        ("carla@example.com", 300, 900, "member", None),
        ("dead@example.net", None, None, "", 200),  # bounces still disable delivery, apart from pauses
    ]


async def test_a_lists_own_size_limit_refuses_at_rcpt_and_after_data(club_config: Config, service, clock: Clock):
    cfg = club_config
    shown = json.loads(
        (await asyncio.to_thread(cli, cfg, "lists", "set", "youth", "--max-size", "2048", "--json")).output
    )
    assert shown["max_size"] == 2048
    reader = connect_sync(cfg.database)
    try:
        ask = {
            (rcpt, size): policy.decide(
                {"request": "smtpd_access_policy", "sender": "anna@example.net", "recipient": rcpt, "size": size},
                reader,
                cfg,
                clock(),
            )
            for rcpt in ("youth@myclub.org", "trainers@myclub.org")
            for size in ("0", "2048", "5000")
        }
    finally:
        reader.close()
    assert ask[("youth@myclub.org", "5000")] == (
        "552 5.3.4 message too big for list youth: 5000 bytes, at most 2048"
    )  # fmt: skip
    assert ask[("youth@myclub.org", "0")] == ask[("youth@myclub.org", "2048")] == "DUNNO"  # 0: no SIZE= given
    assert ask[("trainers@myclub.org", "5000")] == "DUNNO"  # no limit of its own
    big = message(body=("x" * 98 + "\r\n") * 40)  # 4 kB
    t = await lmtpclient.send(lmtp_target(cfg), "anna@example.net", ["youth@myclub.org", "trainers@myclub.org"], big)
    assert t.data[0].startswith("552 5.3.4 message too big for list youth"), t.data
    assert t.data[1].endswith("accepted"), t.data
    assert (await post(cfg, message())).endswith("accepted")
    back = await asyncio.to_thread(cli, cfg, "lists", "set", "youth", "--default-max-size", "--json")
    assert json.loads(back.output)["max_size"] is None


def test_an_html_only_reply_can_reject_and_an_out_of_office_reply_decides_nothing():
    from lmtpd.message import read_headers, split_message
    from lmtpd.rules import automatic_reason

    html = (
        b"From: Carla <carla@example.com>\r\nSubject: Re: held post\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n\r\n<div>reject spam, sorry</div>\r\n"
    )
    assert moderation.reply_decision(html) == (False, "spam, sorry")
    vacation = b"From: Anna <anna@example.net>\r\nSubject: Automatic reply: Did you send this?\r\n\r\nAway.\r\n"
    assert automatic_reason(read_headers(vacation), "anna@example.net", split_message(vacation)[0])
