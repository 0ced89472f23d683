"""Hostile input, one regression test each: forged verdicts, injected headers, replies
that could not be sent after a commit, and administrator text with line breaks."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from email import message_from_bytes
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmtpd import roster
from lmtpd.cli import main
from lmtpd.config import Config
from lmtpd.copies import ListStyle, copy_headers
from lmtpd.headers import HeaderValueError, address_field, field, text

from .helpers import lmtpclient
from .helpers.club import add_list, message, new_club, rows, running, write_config
from .helpers.sink import Sink
from .helpers.timing import Clock

# RFC 2047 words whose text holds CR LF and a header line of the attacker's choice
INJECTED = "=?utf-8?q?Eve=0D=0AList-Unsubscribe=3A_=3Cmailto=3Aevil=40example=2Eorg=3E?="
SLOPPY = "=?utf-8?q?Eve=0D=0AList-Unsubscribe:_<mailto:evil@example.org>?="  # not even valid RFC 2047
ENHANCED = re.compile(r"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}( |$)")


@pytest.fixture
async def trusting_club(short_dir: Path, sink: Sink, clock: Clock) -> AsyncIterator[Config]:
    """A running club whose lists need proof of the sender, trusting Authentication-Results of mx.myclub.org.

    The list open needs no proof and always rewrites From (DMARC mitigation).
    """
    cfg = await new_club(
        short_dir, f"unix:{short_dir}/lmtpd.sock", sink.port,
        extra='[auth]\nrequire = "dkim-or-spf"\nauthserv_id = "mx.myclub.org"\n',
        relay_extra="deliver = false",
    )  # fmt: skip
    await add_list(cfg, "open", roster.ListSettings(auth_require="none", dmarc_mitigation="always"))
    async with running(cfg, clock):
        yield cfg


async def session(cfg: Config, lines: list[bytes], data: bytes | None = None) -> list[str]:
    """A raw LMTP session: each command line, one reply each; DATA then one reply per 250 RCPT."""
    reader, writer = await lmtpclient.connect(str(cfg.lmtp.listen))
    replies: list[str] = []
    try:
        replies += await lmtpclient.read_reply(reader)
        accepted = 0
        for line in lines:
            writer.write(line + b"\r\n")
            reply = await lmtpclient.read_reply(reader)
            replies += reply
            if line.upper().startswith(b"RCPT") and reply[-1].startswith("250"):
                accepted += 1
        if data is not None:
            writer.write(b"DATA\r\n")
            go = await lmtpclient.read_reply(reader)
            replies += go
            if go[-1].startswith("354"):
                writer.write(lmtpclient.dot_stuff(data))
                for _ in range(accepted):
                    replies += await lmtpclient.read_reply(reader)
                assert await lmtpclient.no_more_replies(reader)
        return replies
    finally:
        writer.close()


# ------------------------------------------------------- who wrote the post


AR_PASS = "Authentication-Results: mx.myclub.org; dkim=pass header.d=example.net header.s=sel\r\n"
AR_FAIL = "Authentication-Results: mx.myclub.org; dkim=fail header.d=example.net header.s=sel\r\n"
RECEIVED = (
    "Received: from mail.example.org (mail.example.org [198.51.100.7])\r\n"
    "\tby mx.myclub.org (Postfix) with ESMTPS id 4XyZ1; Sun, 22 Nov 2026 10:00:00 +0000\r\n"
)


async def post(cfg: Config, data: bytes, rcpts=("youth@myclub.org",), sender="anna@example.net") -> list[str]:
    return (await lmtpclient.send(str(cfg.lmtp.listen), sender, list(rcpts), data)).data


async def test_an_added_pass_does_not_outvote_our_mtas_fail(trusting_club):
    """Our milter says fail; the stranger's look-alike below it says pass: two claims, none trusted."""
    cfg = trusting_club
    data = (AR_FAIL + RECEIVED + AR_PASS).encode() + message()
    replies = await post(cfg, data)
    assert replies[0].startswith("550 5.7.1 <anna@example.net> is not proven"), replies
    assert "by=verified" in replies[0]  # lmtpd checked itself instead of believing either
    assert rows(cfg, "SELECT * FROM posts") == []


async def test_two_passes_are_not_believed_either(trusting_club):
    cfg = trusting_club
    replies = await post(cfg, (AR_PASS + RECEIVED + AR_PASS).encode() + message())
    assert replies[0].startswith("550 5.7.1"), replies


async def test_copies_carry_no_verdict_in_our_name(trusting_club):
    cfg = trusting_club
    other = "Authentication-Results: mx.example.net; dkim=pass header.d=example.net\r\n"
    replies = await post(cfg, (AR_PASS + RECEIVED + other).encode() + message())
    assert replies[0].startswith("250"), replies
    (post_row,) = rows(cfg, "SELECT p.headers, m.raw, m.auth FROM posts p JOIN messages m ON m.id = p.message_id")
    assert post_row["auth"] == "dkim=pass header.d=example.net; spf=none; by=mx.myclub.org"
    assert b"Authentication-Results: mx.myclub.org" not in bytes(post_row["headers"])
    assert b"Authentication-Results: mx.myclub.org" not in bytes(post_row["raw"])
    assert b"Authentication-Results: mx.example.net" in bytes(post_row["headers"])  # not ours: left alone


async def test_the_null_sender_never_posts(trusting_club):
    cfg = trusting_club
    replies = await session(
        cfg,
        [b"LHLO x.example.org", b"MAIL FROM:<>", b"RCPT TO:<open@myclub.org>", b"RCPT TO:<youth-bounces@myclub.org>"],
        message(),
    )
    assert any(
        r.startswith("550 5.7.1 <open@myclub.org>: a list does not take mail from the null sender") for r in replies
    )
    assert replies[-1].startswith("250") and replies[-1].endswith("bounce stored")
    assert rows(cfg, "SELECT * FROM posts") == []


# ---------------------------------------------------- nothing injected


def test_encoded_words_that_decode_to_line_breaks_add_no_header():
    block = (
        f"From: {INJECTED} <anna@example.net>\r\n"
        "Subject: =?utf-8?q?Hi=0D=0AList-Unsubscribe:_<mailto:x@example.org>?=\r\nTo: youth@myclub.org\r\n"
    ).encode()
    for reply_to, sloppy in (("poster", False), ("list", False), ("poster", True)):
        raw = block.replace(INJECTED.encode(), SLOPPY.encode()) if sloppy else block
        out = copy_headers(raw, ListStyle("youth", "myclub.org", reply_to=reply_to), True)
        names = [line.split(b":")[0] for line in out.split(b"\r\n") if line and line[:1] not in b" \t"]
        assert names.count(b"List-Unsubscribe") == 1, out
        assert b"evil@example.org" not in out.split(b"List-Unsubscribe:")[1].split(b"\r\n")[0]
        msg = message_from_bytes(out)
        assert msg["List-Unsubscribe"] == "<mailto:youth-request@myclub.org?subject=unsubscribe>"
        assert text(str(msg["Subject"])) == "[youth] Hi List-Unsubscribe: <mailto:x@example.org>"
        if not sloppy:  # rewritten to the list, the name decoded and made one line
            name = "Eve List-Unsubscribe: <mailto:evil@example.org> via youth"
            assert text(str(msg["From"])) == f'"{name}" <youth@myclub.org>'


def test_every_built_header_refuses_line_breaks_and_folds():
    for bad in ("a\r\nX-Evil: 1", "a\nb", "a\rb", "a\x00b"):
        with pytest.raises(HeaderValueError):
            field("Subject", bad)
        with pytest.raises(HeaderValueError):
            address_field("From", bad, "youth@myclub.org")
    long = field("Subject", " ".join(["word"] * 60))
    assert all(len(line) <= 78 for line in long.split(b"\r\n"))
    assert message_from_bytes(long + b"\r\n\r\n")["Subject"].replace("\r\n", "") == " ".join(["word"] * 60)
    unbreakable = field("Subject", "x" * 2000)
    assert all(len(line) <= 998 for line in unbreakable.split(b"\r\n"))
    assert text("=?utf-8?q?a=00b=0Dc?=") == "a b c"


async def test_a_rewritten_from_of_a_stored_post_has_no_injected_line(trusting_club):
    cfg = trusting_club
    replies = await post(cfg, message(author=f"{INJECTED} <anna@example.net>"), rcpts=("open@myclub.org",))
    assert replies[0].startswith("250"), replies
    (row,) = rows(cfg, "SELECT headers FROM posts")
    block = bytes(row["headers"])
    names = [line.split(b":")[0].lower() for line in block.split(b"\r\n") if line and line[:1] not in b" \t"]
    assert names.count(b"list-unsubscribe") == 1 and names.count(b"from") == 1, block
    msg = message_from_bytes(block + b"\r\n")
    assert msg["List-Unsubscribe"] == "<mailto:open-request@myclub.org?subject=unsubscribe>"
    assert msg["From"].endswith("<open@myclub.org>")


def run(cfg_path: Path, *args: str):
    return CliRunner().invoke(main, ["--config", str(cfg_path), *args])


def test_administrator_text_with_line_breaks_is_refused(tmp_path: Path):
    cfg_path = write_config(tmp_path, "127.0.0.1:8024", relay_port=1)
    for option in ("--description", "--prefix", "--archive"):
        result = run(cfg_path, "lists", "add", "youth", option, "x\r\nList-Unsubscribe: <mailto:evil@example.org>")
        assert result.exit_code == 65, (option, result.output)
        assert "control characters" in result.output and "\\r\\n" in result.output
    assert run(cfg_path, "lists", "add", "youth", "--description", "Youth – Jugend").exit_code == 0
    result = run(cfg_path, "members", "add", "anna@example.net", "--name", "Anna\nX-Evil: 1")
    assert result.exit_code == 65 and "control characters" in result.output
    csv_file = tmp_path / "m.csv"
    csv_file.write_text('anna@example.net,"Anna\nX-Evil: 1",youth\n')
    result = run(cfg_path, "members", "import", str(csv_file))
    assert result.exit_code == 65 and "line 2: the name may not contain control characters" in result.output
    # what an older database may hold is shown escaped, never raw
    db = sqlite3.connect(tmp_path / "club.sqlite3")
    db.execute("UPDATE lists SET description = 'a' || char(13, 10) || 'b' || char(27) || '[31m'")
    db.execute("INSERT INTO members (address, name, created_at) VALUES ('bob@example.net', 'B' || char(10) || 'x', 0)")
    db.commit()
    db.close()
    listing = run(cfg_path, "lists", "list").output
    assert "a\\r\\nb\\x1b[31m" in listing and "\x1b" not in listing and listing.count("\n") == 1
    members = run(cfg_path, "members", "list").output
    assert "B\\nx" in members and members.count("\n") == 1


# ------------------------------------------------- every reply sendable, once


async def test_an_undecodable_recipient_is_refused_at_rcpt_and_the_post_stored_once(trusting_club):
    cfg = trusting_club
    replies = await session(
        cfg,
        [b"LHLO x.example.org", b"MAIL FROM:<anna@example.net>", b"RCPT TO:<open+\xff@myclub.org>",
         b"RCPT TO:<open@myclub.org>"],
        message(),
    )  # fmt: skip
    assert replies[-4].startswith("553 5.1.3") and "not valid UTF-8" in replies[-4], replies
    assert replies[-3].startswith("250") and replies[-2].startswith("354")
    assert replies[-1].startswith("250 2.0.0 <open@myclub.org>"), replies
    assert len(rows(cfg, "SELECT * FROM posts")) == 1


async def test_an_undecodable_sender_is_refused_at_mail(trusting_club):
    replies = await session(trusting_club, [b"LHLO x.example.org", b"MAIL FROM:<an\xffna@example.net>"])
    assert replies[-1].startswith("553 5.1.7"), replies


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"From: Anna <an\xffna@example.net>", "550 5.6.0"),  # never a member: refused once, not retried
        (b"From: J\xf6rg <anna@example.net>", "250 2.0.0"),  # Latin-1 in the name only: fine
        (b"From: anna@example.net\r\nAuto-Submitted: auto-\xffreplied", "250 2.0.0"),  # accepted, not posted
    ],
)
async def test_invalid_8bit_headers_get_one_final_answer(trusting_club, header, expected):
    data = header + b"\r\nTo: open@myclub.org\r\nSubject: x\r\nMessage-ID: <8bit@example.net>\r\n\r\nbody\r\n"
    replies = await session(
        trusting_club, [b"LHLO x.example.org", b"MAIL FROM:<anna@example.net>", b"RCPT TO:<open@myclub.org>"], data
    )
    assert replies[-1].startswith(expected), replies


async def test_every_reply_after_lhlo_has_an_enhanced_code(trusting_club):
    commands = [
        b"LHLO x.example.org", b"NOOP", b"DATA", b"RCPT TO:<open@myclub.org>", b"MAIL", b"MAIL FROM:x",
        b"FOO bar", b"HELO x", b"EHLO x", b"VRFY anna", b"MAIL FROM:<anna@example.net>",
        b"MAIL FROM:<anna@example.net>", b"RCPT TO:<nosuchlist@myclub.org>", b"RCPT TO:<a@example.org>",
        b"RCPT TO:youth", b"RSET", b"\x80\x81", b"X" * 2000, b"QUIT",
    ]  # fmt: skip
    replies = await session(trusting_club, commands)
    greeting, lhlo, rest = replies[0], replies[1:7], replies[7:]
    assert greeting.startswith("220") and all(r.startswith("250") for r in lhlo)
    assert len(rest) == len(commands) - 1
    bad = [r for r in rest if not ENHANCED.match(r)]
    assert not bad, bad
