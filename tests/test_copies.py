"""What members receive: golden header blocks, the body untouched, DMARC that passes."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from email import message_from_bytes
from email.header import decode_header, make_header
from pathlib import Path

import dkim
import dns.resolver
import pytest

from lmtpd import auth, roster
from lmtpd.config import Config
from lmtpd.copies import ListStyle, Signer, copy_headers, prefixed_subject
from lmtpd.message import split_message
from lmtpd.queue import copy_of
from lmtpd.routes import make_resolver
from lmtpd.runtime import make_signer, open_runtime
from lmtpd.store import connect_sync

from .helpers import dnsserver
from .helpers.club import DATA, add_list, message, new_club, write_config
from .helpers.processes import spawn_lmtpd
from .helpers.signing import dkim_key, sign
from .helpers.timing import Clock

GOLDEN = DATA / "golden"
STYLE = ListStyle("youth", "myclub.org", "Youth section", owner="admin@myclub.org")
NAMES = ["plain", "multipart_attachment", "utf8_headers", "latin1_subject", "html_only", "bare_lf"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mitigate", [False, True])
def test_golden_header_blocks_and_untouched_bodies(name: str, mitigate: bool):
    raw = (DATA / f"{name}.eml").read_bytes()
    block, body = split_message(raw)
    headers = copy_headers(block, STYLE, mitigate)
    golden = GOLDEN / f"{name}{'.mitigated' if mitigate else ''}.headers"
    assert headers == golden.read_bytes()
    copy = copy_of(raw, headers)
    assert copy.endswith(body) and copy == headers + body  # the body, byte for byte
    msg = message_from_bytes(copy)
    for gone in ("Return-Path", "Delivered-To", "X-Original-To", "Bcc"):
        assert msg[gone] is None
    assert msg["Precedence"] == "list" and msg["List-Id"] == '"Youth section" <youth.myclub.org>'
    assert msg["List-Unsubscribe"] == "<mailto:youth-request@myclub.org?subject=unsubscribe>"
    assert str(make_header(decode_header(msg["Subject"]))).startswith("[youth] ")


def test_foreign_list_headers_are_replaced():
    raw = (DATA / "multipart_attachment.eml").read_bytes()
    copy = copy_headers(split_message(raw)[0], STYLE, False)
    assert b"other.example.org" not in copy and copy.count(b"List-Id:") == 1


@pytest.mark.parametrize(
    "subject, expected",
    [
        ("Training", "[youth] Training"),
        ("Re: [youth] Re: [youth] Training", "Re: [youth] Training"),
        ("[youth] [youth] Training", "[youth] Training"),
        ("AW: RE: Training", "Re: [youth] Training"),
        ("Fwd: Training", "[youth] Fwd: Training"),
        ("", "[youth]"),
    ],
)
def test_the_prefix_never_stacks(subject: str, expected: str):
    assert prefixed_subject(subject, "[youth]") == expected
    assert prefixed_subject(expected, "[youth]") == expected  # applying it twice changes nothing


def test_encoded_subjects_are_decoded_prefixed_and_reencoded():
    block = b"From: a@example.net\r\nSubject: =?iso-8859-1?q?Re:_[youth]_R=E9union?=\r\n"
    out = message_from_bytes(copy_headers(block, STYLE, False) + b"\r\n")
    assert str(make_header(decode_header(out["Subject"]))) == "Re: [youth] Réunion"
    none = copy_headers(
        b"From: a@example.net\r\nSubject: hello\r\n", ListStyle("youth", "myclub.org", prefix=""), False
    )
    assert b"Subject: hello\r\n" in none


def test_reply_to_policies():
    block = b"From: Anna <anna@example.net>\r\nSubject: x\r\nReply-To: anna.home@example.net\r\n"
    poster = message_from_bytes(copy_headers(block, STYLE, False))
    assert poster["Reply-To"] == "anna.home@example.net"
    to_list = ListStyle("youth", "myclub.org", reply_to="list")
    msg = message_from_bytes(copy_headers(block, to_list, True))
    assert msg["Reply-To"] == "<youth@myclub.org>" and msg["Cc"] == '"Anna" <anna@example.net>'
    assert msg["From"] == '"Anna via youth" <youth@myclub.org>'
    explicit = ListStyle("youth", "myclub.org", reply_to="coach@myclub.org")
    assert message_from_bytes(copy_headers(block, explicit, False))["Reply-To"] == "<coach@myclub.org>"


# ------------------------------------------------------------ DMARC, end of the line


class Receiver:
    """What a receiving MTA would conclude about a copy: DMARC pass or fail."""

    def __init__(self, resolver: dns.resolver.Resolver):
        self.checker = auth.Checker(resolver, 3)

    async def dmarc_pass(self, copy: bytes) -> bool:
        """(In a thread: the DNS server answering it runs on this event loop.)"""
        from_domain = message_from_bytes(copy)["From"].rpartition("@")[2].strip(">").lower()
        result = await asyncio.to_thread(self.checker.check, copy, "")
        return result.dkim == auth.PASS and auth.aligned(result.dkim_domain, from_domain)


@pytest.fixture
async def dmarc_world(tmp_path: Path):
    club_key, club_record = dkim_key()
    author_key, author_record = dkim_key()
    zone = dnsserver.Zone()
    zone.add("sel._domainkey.myclub.org", "TXT", club_record)
    zone.add("sel._domainkey.strict.example", "TXT", author_record)
    zone.add("_dmarc.strict.example", "TXT", '"v=DMARC1; p=reject"')
    transport, port = await dnsserver.start(zone)
    key_file = tmp_path / "dkim.key"
    key_file.write_bytes(club_key)
    yield tmp_path, port, author_key, key_file
    transport.close()


async def copy_for(tmp_path: Path, port: int, key_file: Path, mitigation: str, post: bytes) -> bytes:
    (tmp_path / mitigation).mkdir()
    cfg = await new_club(
        tmp_path / mitigation, "127.0.0.1:8024", 1,
        extra=f'[dns]\nnameservers = ["127.0.0.1:{port}"]\ntimeout = 3\n'
              f'[dkim]\nselector = "sel"\nkey_file = "{key_file}"\n',
        members={"sam@strict.example": ("Sam", [])},
    )  # fmt: skip
    await add_list(cfg, "club", roster.ListSettings(dmarc_mitigation=mitigation))
    await post_with_signer(cfg, post, ["club@myclub.org"], "sam@strict.example")
    conn = connect_sync(cfg.database)
    row = conn.execute("SELECT m.raw, p.headers FROM posts p JOIN messages m ON m.id = p.message_id").fetchone()
    conn.close()
    return copy_of(bytes(row[0]), row[1])


async def post_with_signer(cfg: Config, data: bytes, rcpts: list[str], sender: str) -> list[str]:
    resolver = make_resolver(cfg.dns.nameservers, cfg.dns.timeout, dns.resolver.Resolver)
    async with open_runtime(cfg, Clock()) as runtime:
        handler = runtime.ingest(None, auth.Checker(resolver, 3), make_signer(cfg))
        return await handler.decide(sender, rcpts, data)


async def test_a_p_reject_authors_post_passes_dmarc_at_the_receiver(dmarc_world):
    tmp_path, port, author_key, key_file = dmarc_world
    receiver = Receiver(make_resolver((f"127.0.0.1:{port}",), 3, dns.resolver.Resolver))
    post = sign(message(author="Sam <sam@strict.example>"), "strict.example", author_key)
    assert await receiver.dmarc_pass(post)  # as Sam sent it

    mitigated = await copy_for(tmp_path, port, key_file, "auto", post)
    msg = message_from_bytes(mitigated)
    assert msg["From"] == '"Sam via club" <club@myclub.org>' and msg["Reply-To"] == '"Sam" <sam@strict.example>'
    assert await asyncio.to_thread(dkim.verify, mitigated, dnsfunc=receiver.checker._txt)  # ours, first
    assert await receiver.dmarc_pass(mitigated)

    untouched_from = await copy_for(tmp_path, port, key_file, "never", post)
    assert message_from_bytes(untouched_from)["From"] == "Sam <sam@strict.example>"
    assert not await receiver.dmarc_pass(untouched_from)  # Sam's signature broke on the new Subject


# ---------------------------------------------------------------- loops and automatic mail


async def test_loops_and_automatic_mail_are_accepted_but_not_posted(tmp_path: Path):
    cfg = await new_club(tmp_path, "127.0.0.1:8024", 1)
    config = cfg.source
    ours = copy_headers(split_message(message())[0], STYLE, False) + split_message(message())[1]
    other = copy_headers(split_message(message())[0], ListStyle("chess", "example.org"), False) + b"\r\nbody\r\n"
    received = "".join(f"Received: from hop{i}.example.net by hop{i + 1}.example.net\r\n" for i in range(31))
    cases = {
        "own copy": (ours, "loop: the message is a copy youth@myclub.org sent"),
        "another list's copy": (other, "automatic mail: Precedence: list"),
        "vacation": (message(subject="Out of office", extra="Auto-Submitted: auto-replied\r\n"),
                     "automatic mail: Auto-Submitted: auto-replied"),
        "31 Received": (received.encode() + message(), "loop: 31 Received headers (at most 30)"),
    }  # fmt: skip
    for data, reason in cases.values():
        replies = await post_with_signer(cfg, data, ["youth@myclub.org"], "anna@example.net")
        assert replies[0].startswith("250") and replies[0].endswith(f"not posted: {reason}"), replies
    db = sqlite3.connect(cfg.database)
    assert db.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 0
    db.close()
    proc = await spawn_lmtpd(config, "queue", "list", "--state", "dropped", "--json", stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    listed = json.loads(out)
    assert sorted(e["last_reply"] for e in listed) == sorted(reason for _, reason in cases.values())
    assert {e["state"] for e in listed} == {"dropped"}


async def test_mail_to_the_request_address_without_a_command_reaches_the_owner(tmp_path: Path):
    cfg = await new_club(tmp_path, "127.0.0.1:8024", 1)
    question = message(subject="A question", body="Can my brother come along?\r\n")
    replies = await post_with_signer(cfg, question, ["youth-request@myclub.org"], "x@example.org")
    assert "forwarded to the list owner" in replies[0]
    db = sqlite3.connect(cfg.database)
    row = db.execute(
        "SELECT d.recipient, m.mail_from, m.raw FROM deliveries d JOIN posts p ON p.id = d.post_id "
        "JOIN messages m ON m.id = p.message_id"
    ).fetchone()
    db.close()
    assert row[0] == "admin@myclub.org" and row[1] == ""
    assert bytes(row[2]).startswith(b"X-Lmtpd-Forwarded-For: <youth-request@myclub.org>\r\n")


async def test_dkim_keygen_and_a_missing_key(tmp_path: Path):
    config = write_config(tmp_path, "127.0.0.1:8024", 1, extra='[dkim]\nselector = "s1"\nkey_file = "dkim.key"\n')
    proc = await spawn_lmtpd(config, "dkim", "keygen", stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    record = out.decode().splitlines()[-1]
    assert record.startswith('s1._domainkey.myclub.org. IN TXT ( "v=DKIM1; k=rsa; p=')
    key = tmp_path / "dkim.key"
    assert os.stat(key).st_mode & 0o777 == 0o600
    Signer.from_file("myclub.org", "s1", key)  # usable
    proc = await spawn_lmtpd(config, "dkim", "keygen", stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode != 0 and b"not overwriting" in err
    proc = await spawn_lmtpd(config, "check-config", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0 and b"OK" in out and b"admin admin@myclub.org is in the club domain" in err
    key.write_bytes(b"not a key")
    proc = await spawn_lmtpd(config, "check-config", stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 78 and b"[dkim] key_file: DKIM key cannot sign" in err
    key.unlink()
    proc = await spawn_lmtpd(config, "serve", stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 78
    assert err.decode().strip().splitlines()[-1].startswith("lmtpd: config error: cannot read DKIM key")
