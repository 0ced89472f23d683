"""Bounces: reading real-world formats, scoring members, disabling dead addresses."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tomllib
from collections.abc import AsyncIterator

import pytest

from lmtpd import bounces
from lmtpd.addresses import verp_recipient, verp_sender
from lmtpd.bounce_reasons import DEAD, Reason, classify, find_status
from lmtpd.config import Config, load
from lmtpd.runtime import open_runtime
from lmtpd.store import connect_sync

from .helpers.club import DATA, message, new_club, write_config
from .helpers.processes import spawn_lmtpd
from .helpers.timing import Clock

CORPUS = DATA / "bounces"
EXPECTED = tomllib.loads((CORPUS / "expected.toml").read_text())


def test_the_corpus_is_complete():
    assert sorted(p.name for p in CORPUS.glob("*.eml")) == sorted(EXPECTED)
    assert len(EXPECTED) >= 40


def _agrees(name: str, reading: bounces.Reading) -> bool:
    want = EXPECTED[name]
    return (
        reading.reason == want["reason"]
        and reading.bounce_class == want["kind"]
        and set(want["recipients"]) <= set(reading.recipients)
        and reading.status == want.get("status", reading.status)
    )


def _read(name: str, line_ending: bytes) -> bounces.Reading:
    raw = (CORPUS / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", line_ending)
    return bounces.read_bounce(raw)


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("line_ending", [b"\r\n", b"\n"])
def test_reading_real_world_bounces(name: str, line_ending: bytes):
    reading = _read(name, line_ending)
    want = EXPECTED[name]
    assert (reading.reason, reading.bounce_class) == (want["reason"], want["kind"])
    assert set(want["recipients"]) <= set(reading.recipients)
    assert reading.status == want.get("status", reading.status)


def test_corpus_agreement_report(capsys: pytest.CaptureFixture[str]):
    """The whole corpus at once, as a figure: how many reports lmtpd reads as expected."""
    results = {(n, le): _agrees(n, _read(n, le)) for n in EXPECTED for le in (b"\n", b"\r\n")}
    agreed = sum(results.values())
    with capsys.disabled():
        print(f"\nbounce corpus: {agreed}/{len(results)} readings agree (LF and CRLF)")
    assert agreed == len(results), [k for k, ok in results.items() if not ok]


def test_never_scored_reasons_are_never_dead():
    for text, reason in [
        ("550 5.7.1 Service unavailable; client host [192.0.2.1] blocked using zen.spamhaus.org", Reason.BLOCKED),
        ("550 5.1.1 user unknown; your IP 192.0.2.1 is listed at bl.spamcop.net", Reason.BLOCKED),
        ("421 4.7.0 Too many connections from your host", Reason.RATELIMITED),
        ("554 5.2.0 Recipient quota exceeded", Reason.MAILBOXFULL),
        ("554 5.6.0 Message content rejected", Reason.CONTENTERROR),
    ]:
        assert classify(find_status(text), text) == reason
        assert reason not in DEAD
    assert classify("5.1.1", "") == Reason.USERUNKNOWN  # the code speaks when the text does not
    assert classify("2.0.0", "250 ok", "relayed") == Reason.DELIVERED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_reader_never_crashes_on_damaged_input(name: str):
    raw = (CORPUS / name).read_bytes()
    for cut in (0, 1, len(raw) // 3, len(raw) // 2, len(raw) - 1):
        bounces.read_bounce(raw[:cut])
        bounces.read_bounce(raw[:cut] + b"\xff\xfe\x00" + raw[cut:])


def test_verp_round_trip():
    sender = verp_sender("youth-bounces@myclub.org", "bob.smith+tag@example.net")
    assert sender == "youth-bounces+bob.smith+tag=example.net@myclub.org"
    extension = sender.split("@")[0].split("+", 1)[1]
    assert verp_recipient(extension) == "bob.smith+tag@example.net"
    assert verp_sender("", "bob@example.net") == ""
    assert verp_recipient("nothing") is None


# ---------------------------------------------------------------- processing

MEMBERS = {
    "anna@example.net": ("Anna", ["youth"]),
    "bob@example.net": ("Bob", ["youth"]),
    "carla@example.com": ("Carla", ["youth"]),
    "ida@strict.example": ("Ida", ["youth"]),
    "kim@example.net": ("Kim", ["youth"]),
    "mo@qp.example": ("Mo", ["youth"]),
    "kai@listed.example": ("Kai", ["youth"]),
    "yul@gone.example": ("Yul", ["youth"]),
    "rae@full.example": ("Rae", ["youth"]),
    "ben@yahoo.example": ("Ben", ["youth"]),
    "xan@ok.example": ("Xan", ["youth"]),
}


class BounceClub:
    """A club with its database open, receiving bounces through ingest and processing them."""

    def __init__(self, cfg: Config, clock: Clock):
        self.cfg, self.clock = cfg, clock
        self.db = connect_sync(cfg.database)

    async def receive(self, name: str, to: str | None = None) -> None:
        """Deliver a corpus bounce over the ingest path to the address it names."""
        raw = (CORPUS / name).read_bytes()
        if to is None:
            to = next(
                line.split(":", 1)[1].strip().strip("<>")
                for line in raw.decode("utf-8", "replace").splitlines()
                if line.lower().startswith("to:")
            )
        async with open_runtime(self.cfg, self.clock) as runtime:
            replies = await runtime.ingest().decide("", [to], raw)
        assert replies[0].endswith("bounce stored"), replies

    async def process(self) -> bounces.RunReport:
        async with open_runtime(self.cfg, self.clock, ingest=False) as runtime:
            return await bounces.process(runtime.writer.submit, self.cfg, self.clock.now)

    def member(self, address: str) -> sqlite3.Row:
        return self.db.execute("SELECT * FROM members WHERE address = ?", (address,)).fetchone()

    def bounce_rows(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM bounces ORDER BY id").fetchall()


@pytest.fixture
async def bounce_club(tmp_path, clock: Clock) -> AsyncIterator[BounceClub]:
    """A club (no server) whose members are disabled after three bounce days; scores go stale after 7."""
    cfg = await new_club(
        tmp_path, "127.0.0.1:8024", 1, extra="[bounces]\nthreshold = 3\nstale_after_days = 7\n", members=MEMBERS
    )
    c = BounceClub(cfg, clock)
    yield c
    c.db.close()


async def test_permanent_bounces_count_once_a_day_and_disable_at_the_threshold(bounce_club: BounceClub, clock: Clock):
    for _ in range(3):
        await bounce_club.receive("postfix_user_unknown.eml")
        await bounce_club.receive("postfix_user_unknown.eml")  # the same day: no second point
        report = await bounce_club.process()
        assert report.counts == {"permanent": 2}
        clock.advance(86400)
    bob = bounce_club.member("bob@example.net")
    assert bob["bounce_score"] == 3
    assert bob["delivery_disabled_at"] is not None
    assert "5.1.1" in bob["disabled_reason"] and "User unknown" in bob["disabled_reason"]
    assert [r["counted"] for r in bounce_club.bounce_rows()] == [1, 0, 1, 0, 1, 0]
    # one summary to the administrator, queued as a report, naming bob with evidence
    summaries = bounce_club.db.execute(
        "SELECT m.raw FROM messages m JOIN posts p ON p.message_id = m.id WHERE p.kind = 'report'"
    ).fetchall()
    assert len(summaries) == 1
    text = bytes(summaries[0][0]).decode()
    assert "To: admin@myclub.org" in text and "<bob@example.net> (Bob)" in text and "5.1.1" in text
    assert (await bounce_club.process()).summary_queue_id is None  # reported once
    # bob stays a member but gets no copies of the next post
    async with open_runtime(bounce_club.cfg, clock) as runtime:
        await runtime.ingest().decide("anna@example.net", ["youth@myclub.org"], message())
    recipients = {
        r[0] for r in bounce_club.db.execute("SELECT recipient FROM deliveries WHERE recipient != 'admin@myclub.org'")
    }
    assert "bob@example.net" not in recipients and "anna@example.net" in recipients


async def test_a_stale_score_starts_again(bounce_club: BounceClub, clock: Clock):
    for _ in range(2):
        await bounce_club.receive("postfix_user_unknown.eml")
        await bounce_club.process()
        clock.advance(86400)
    assert bounce_club.member("bob@example.net")["bounce_score"] == 2
    clock.advance(8 * 86400)
    await bounce_club.receive("postfix_user_unknown.eml")
    await bounce_club.process()
    bob = bounce_club.member("bob@example.net")
    assert bob["bounce_score"] == 1 and bob["delivery_disabled_at"] is None


async def test_policy_temporary_and_auto_replies_do_not_count(bounce_club: BounceClub):
    await bounce_club.receive("dmarc_reject.eml")
    await bounce_club.receive("postfix_delayed.eml")
    await bounce_club.receive("vacation.eml")
    report = await bounce_club.process()
    assert report.counts == {"policy": 1, "temporary": 1, "auto-reply": 1}
    rows = bounce_club.bounce_rows()
    assert [(r["kind"], r["address"], r["counted"]) for r in rows] == [
        ("policy", "ida@strict.example", 0),
        ("temporary", "carla@example.com", 0),
        ("auto-reply", "kim@example.net", 0),
    ]
    assert all(m["bounce_score"] == 0 for m in bounce_club.db.execute("SELECT bounce_score FROM members"))


async def test_attribution_without_verp_and_unattributed_bounces(bounce_club: BounceClub):
    await bounce_club.receive("quoted_printable_dsn.eml")  # sent to youth-bounces@, names mo@qp.example
    await bounce_club.receive("gmail_no_such_user.eml", to="youth-bounces@myclub.org")  # names a stranger
    await bounce_club.receive("garbage.eml", to="youth-bounces@myclub.org")
    report = await bounce_club.process()
    assert report.counts == {"permanent": 1, "unattributed": 2}
    rows = bounce_club.bounce_rows()
    assert (rows[0]["kind"], rows[0]["address"], rows[0]["counted"]) == ("permanent", "mo@qp.example", 1)
    assert rows[1]["kind"] == "unattributed" and rows[2]["kind"] == "unattributed"
    assert all(r["processed_at"] is not None for r in rows)  # kept, listed, never dropped


async def test_bounce_commands(bounce_club: BounceClub):
    await bounce_club.receive("postfix_user_unknown.eml")
    await bounce_club.receive("gmail_no_such_user.eml", to="youth-bounces@myclub.org")
    config = bounce_club.cfg.source

    async def lmtpd(*args: str) -> tuple[int, str]:
        proc = await spawn_lmtpd(config, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return proc.returncode, out.decode()

    code, out = await lmtpd("bounces", "list", "--unprocessed", "--json")
    assert code == 0 and len(json.loads(out)) == 2
    code, out = await lmtpd("bounces", "process")
    assert code == 0 and "processed 2 bounce(s): 1 permanent, 1 unattributed" in out
    code, out = await lmtpd("bounces", "list", "--unattributed", "--json")
    listed = json.loads(out)
    assert [b["kind"] for b in listed] == ["unattributed"]
    code, out = await lmtpd("bounces", "show", str(listed[0]["id"]))
    assert code == 0 and "kind:       unattributed" in out and "dora@gmail.example" in out
    code, out = await lmtpd("bounces", "show", "999")
    assert code == 66
    code, out = await lmtpd("members", "list", "--json")
    bob = next(m for m in json.loads(out) if m["address"] == "bob@example.net")
    assert bob["bounce_score"] == 1 and bob["delivery_disabled"] is None
    code, out = await lmtpd("members", "list")
    assert "bob@example.net\tBob\tyouth\tbounces=1" in out
    bounce_club.db.execute("UPDATE members SET delivery_disabled_at = 1, disabled_reason = 'test' WHERE address = ?",
                    ("bob@example.net",))  # fmt: skip
    code, out = await lmtpd("members", "list")
    assert "delivery disabled since" in out
    code, out = await lmtpd("members", "enable", "bob@example.net")
    assert code == 0 and out.strip() == "delivery to bob@example.net enabled"
    bob = bounce_club.member("bob@example.net")
    assert bob["delivery_disabled_at"] is None and bob["bounce_score"] == 0


async def test_two_runs_at_once_process_each_bounce_once(bounce_club: BounceClub):
    for i in range(60):
        await bounce_club.receive("postfix_user_unknown.eml" if i % 2 else "dmarc_reject.eml")
    config = bounce_club.cfg.source
    procs = [
        await spawn_lmtpd(config, "bounces", "process", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        for _ in range(2)
    ]
    outs = [(await p.communicate())[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    totals = [int(out.split("processed ")[1].split()[0]) for out in outs]
    assert sum(totals) == 60
    rows = bounce_club.bounce_rows()
    assert all(r["processed_at"] is not None for r in rows)
    assert bounce_club.member("bob@example.net")["bounce_score"] == 1  # all on one day: one point


async def test_verp_delimiters_are_configurable(tmp_path, clock: Clock):
    cfg = await new_club(tmp_path, "127.0.0.1:8024", 1, extra='[bounces]\nverp_delimiters = "+%"\n', members=MEMBERS)
    assert (
        verp_sender("youth-bounces@myclub.org", "bob@example.net", "+%") == "youth-bounces+bob%example.net@myclub.org"
    )
    c = BounceClub(cfg, clock)
    await c.receive("postfix_user_unknown.eml", to="youth-bounces+bob%example.net@myclub.org")
    report = await c.process()
    assert report.counts == {"permanent": 1}
    assert c.bounce_rows()[0]["address"] == "bob@example.net"
    c.db.close()
    bad = write_config(tmp_path, "127.0.0.1:8024", 1, extra='[bounces]\nverp_delimiters = "-="\n')
    with pytest.raises(Exception, match="verp_delimiters"):
        load(bad)


# ------------------------------------------------------------ reasons and scores


async def test_a_blocklisting_is_recorded_and_never_scored_a_dead_mailbox_is(bounce_club: BounceClub):
    await bounce_club.receive("spamhaus_listed.eml")  # its returned copy says "user unknown" nowhere, DKIM/SPF
    await bounce_club.receive("returned_original_user_unknown.eml")  # its returned copy says "spamhaus", "policy"
    for name in ("outlook_block_list.eml", "no_ptr.eml", "gmail_rate_limited.eml", "expired.eml", "virus.eml"):
        await bounce_club.receive(name, to="youth-bounces+kai=listed.example@myclub.org")
    await bounce_club.process()
    rows = bounce_club.bounce_rows()
    assert [(r["address"], r["reason"], r["counted"]) for r in rows] == [
        ("kai@listed.example", "blocked", 0),
        ("yul@gone.example", "userunknown", 1),
        ("kai@listed.example", "blocked", 0),
        ("kai@listed.example", "blocked", 0),
        ("kai@listed.example", "ratelimited", 0),
        ("kai@listed.example", "expired", 0),
        ("kai@listed.example", "virusdetected", 0),
    ]
    assert bounce_club.member("kai@listed.example")["bounce_score"] == 0
    assert bounce_club.member("yul@gone.example")["bounce_score"] == 1
    assert rows[0]["provider"] == "listed.example" and rows[0]["format"] == "dsn"


async def test_notifications_and_complaints_are_no_failures(bounce_club: BounceClub):
    await bounce_club.receive("delivered_notification.eml")
    await bounce_club.receive("arf_complaint.eml")
    await bounce_club.receive("ses_delivery.eml")
    report = await bounce_club.process()
    assert report.counts == {"notice": 3}
    assert [r["reason"] for r in bounce_club.bounce_rows()] == ["delivered", "feedback", "delivered"]
    assert all(m["bounce_score"] == 0 for m in bounce_club.db.execute("SELECT bounce_score FROM members"))


async def test_every_failed_member_of_a_report_without_verp_is_scored(bounce_club: BounceClub):
    await bounce_club.receive("multi_recipient.eml")  # kim, a stranger, anna (disabled mailbox), carla delivered
    await bounce_club.process()
    failures = bounce_club.db.execute(
        "SELECT address, member_id IS NOT NULL AS member, reason, counted FROM bounce_failures ORDER BY id"
    ).fetchall()
    assert [tuple(f) for f in failures] == [
        ("kim@example.net", 1, "userunknown", 1),
        ("stranger@example.net", 0, "userunknown", 0),
        ("anna@example.net", 1, "suspend", 1),
        ("carla@example.com", 1, "delivered", 0),
    ]
    assert bounce_club.member("kim@example.net")["bounce_score"] == 1
    assert bounce_club.member("anna@example.net")["bounce_score"] == 1
    assert bounce_club.member("carla@example.com")["bounce_score"] == 0
    assert bounce_club.bounce_rows()[0]["address"] == "kim@example.net"


async def test_a_full_mailbox_scores_only_once_it_stayed_full(bounce_club: BounceClub, clock: Clock):
    for day in range(0, 35, 5):  # a full-mailbox report every five days; mailboxfull_after_days = 30
        await bounce_club.receive("mailbox_full_5xx.eml" if day % 10 else "mailbox_full_4xx_delayed.eml")
        await bounce_club.process()
        clock.advance(5 * 86400)
    counted = [r["counted"] for r in bounce_club.bounce_rows()]
    assert counted == [0, 0, 0, 0, 0, 0, 1]  # day 30: full for 30 days
    assert {r["reason"] for r in bounce_club.bounce_rows()} == {"mailboxfull"}
    clock.advance(20 * 86400)  # emptied: no report for longer than stale_after_days, the clock starts again
    await bounce_club.receive("mailbox_full_5xx.eml")
    await bounce_club.process()
    assert bounce_club.bounce_rows()[-1]["counted"] == 0


async def test_reclassify_rereads_and_gives_back_delivery_the_old_rules_took(bounce_club: BounceClub):
    await bounce_club.receive("spamhaus_listed.eml")
    await bounce_club.receive("returned_original_user_unknown.eml")
    await bounce_club.process()
    # as an older lmtpd left it: kai's blocklisting counted, kai disabled
    bounce_club.db.execute("UPDATE bounces SET kind = 'permanent', reason = '', counted = 1 WHERE address = ?",
                           ("kai@listed.example",))  # fmt: skip
    bounce_club.db.execute(
        "UPDATE members SET bounce_score = 5, delivery_disabled_at = 1, disabled_reason = '5 days with bounces' "
        "WHERE address = ?",
        ("kai@listed.example",),
    )
    config = bounce_club.cfg.source
    proc = await spawn_lmtpd(config, "bounces", "reclassify", stdout=asyncio.subprocess.PIPE)
    out = (await proc.communicate())[0].decode()
    assert proc.returncode == 0, out
    assert "reclassified 2 bounce(s): 1 permanent, 1 policy" in out
    assert "delivery enabled again for kai@listed.example" in out
    kai = bounce_club.member("kai@listed.example")
    assert kai["bounce_score"] == 0 and kai["delivery_disabled_at"] is None
    assert bounce_club.member("yul@gone.example")["bounce_score"] == 1
    assert [(r["reason"], r["counted"]) for r in bounce_club.bounce_rows()] == [("blocked", 0), ("userunknown", 1)]
    assert bounce_club.db.execute("SELECT count(*) FROM bounce_failures").fetchone()[0] == 2  # not doubled

    proc = await spawn_lmtpd(config, "bounces", "stats", "--json", stdout=asyncio.subprocess.PIPE)
    stats = json.loads((await proc.communicate())[0])
    assert {(s["reason"], s["provider"], s["failures"], s["counted"], s["dead"]) for s in stats} == {
        ("blocked", "listed.example", 1, 0, False),
        ("userunknown", "gone.example", 1, 1, True),
    }
    proc = await spawn_lmtpd(config, "bounces", "show", "1", "--json", stdout=asyncio.subprocess.PIPE)
    shown = json.loads((await proc.communicate())[0])
    assert shown["reason"] == "blocked" and shown["failures"][0]["reason"] == "blocked"
    assert "spamhaus" in shown["failures"][0]["diagnostic"]
