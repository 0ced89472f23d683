"""Sender authentication at DATA, with DKIM keys made here and a DNS server on 127.0.0.1."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lmtpd import auth, roster
from lmtpd.config import Config, load

from .helpers import dnsserver, lmtpclient
from .helpers.club import add_list, lmtp_target, message, populate, running, write_config
from .helpers.signing import dkim_key, sign
from .helpers.sink import Sink
from .helpers.timing import Clock

RECEIVED_OK = (
    "Received: from mail.example.net (mail.example.net [192.0.2.10])\r\n"
    "\tby mx.myclub.org (Postfix) with ESMTPS id 4XyZ1\r\n"
    "\tfor <youth@myclub.org>; Sun, 22 Nov 2026 10:00:00 +0000 (UTC)\r\n"
)
RECEIVED_OTHER = RECEIVED_OK.replace("192.0.2.10", "198.51.100.7")


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[bytes, str]]:
    return {"example.net": dkim_key(), "other.example": dkim_key()}


@pytest.fixture
async def authenticating_club(short_dir: Path, sink: Sink, clock: Clock, keys) -> AsyncIterator[Config]:
    """A running club whose lists need DKIM or SPF proof, asking a DNS server that knows ``keys``.

    Lists: youth and trainers (the default, dkim-or-spf), open (none), social (dmarc).
    """
    zone = dnsserver.Zone()
    for domain, (_, record) in keys.items():
        zone.add(f"sel._domainkey.{domain}", "TXT", record)
    zone.add("example.net", "TXT", '"v=spf1 ip4:192.0.2.10 -all"')
    zone.add("strict.example", "TXT", '"v=spf1 -all"')
    zone.add("_dmarc.strict.example", "TXT", '"v=DMARC1; p=reject"')
    zone.add("relaxed.example", "TXT", '"v=spf1 -all"')
    transport, port = await dnsserver.start(zone)
    config = write_config(
        short_dir, f"unix:{short_dir}/lmtpd.sock", sink.port,
        extra=f'[dns]\nnameservers = ["127.0.0.1:{port}"]\ntimeout = 3\n'
              '[auth]\nrequire = "dkim-or-spf"\nauthserv_id = "mx.myclub.org"\n',
        relay_extra="deliver = false",
    )  # fmt: skip
    cfg = load(config)
    members = {
        "anna@example.net": ("Anna", ["youth", "trainers"]),
        "sam@strict.example": ("Sam", ["youth"]),
        "rel@relaxed.example": ("Rel", ["youth"]),
    }
    await populate(cfg, members)
    await add_list(cfg, "open", roster.ListSettings(auth_require="none"))
    await add_list(cfg, "social", roster.ListSettings(auth_require="dmarc"))
    try:
        async with running(cfg, clock):
            yield cfg
    finally:
        transport.close()


def stored_auth(cfg: Config) -> list[str]:
    db = sqlite3.connect(cfg.database)
    try:
        return [r[0] for r in db.execute("SELECT auth FROM messages ORDER BY id")]
    finally:
        db.close()


async def post(cfg: Config, data: bytes, rcpts=("youth@myclub.org",), sender="anna@example.net") -> list[str]:
    t = await lmtpclient.send(lmtp_target(cfg), sender, list(rcpts), data)
    return t.data


async def test_a_signed_post_verifies(authenticating_club: Config, keys):
    cfg = authenticating_club
    replies = await post(cfg, sign(message(), "example.net", keys["example.net"][0]))
    assert replies[0].startswith("250"), replies
    assert stored_auth(cfg) == ["dkim=pass header.d=example.net; spf=none; by=verified"]


async def test_a_members_from_without_signature_is_refused(authenticating_club: Config):
    cfg = authenticating_club
    replies = await post(cfg, message())
    assert replies[0].startswith("550 5.7.1 <anna@example.net> is not proven: no DKIM signature"), replies
    assert "youth requires dkim-or-spf" in replies[0]


async def test_a_broken_body_hash_is_refused(authenticating_club: Config, keys):
    cfg = authenticating_club
    signed = sign(message(), "example.net", keys["example.net"][0])
    replies = await post(cfg, signed.replace(b"See you at 10.", b"See you at 11."))
    assert replies[0].startswith("550 5.7.1 <anna@example.net> is not proven: its DKIM signature did not verify")


async def test_a_signature_of_another_domain_is_not_enough(authenticating_club: Config, keys):
    cfg = authenticating_club
    replies = await post(cfg, sign(message(), "other.example", keys["other.example"][0]))
    assert replies[0].startswith("550 5.7.1"), replies
    assert "dkim=pass header.d=other.example" in replies[0]  # it verifies, but is not aligned


async def test_spf_for_the_client_our_postfix_recorded(authenticating_club: Config):
    cfg = authenticating_club
    assert (await post(cfg, RECEIVED_OK.encode() + message()))[0].startswith("250")
    assert stored_auth(cfg) == ["dkim=none; spf=pass smtp.mailfrom=example.net; by=verified"]
    replies = await post(cfg, RECEIVED_OTHER.encode() + message())
    assert replies[0].startswith("550 5.7.1") and "spf=fail" in replies[0]
    # SPF passes for a sender domain, but not one aligned with From
    replies = await post(cfg, RECEIVED_OK.encode() + message(), sender="bounce@example.org")
    assert replies[0].startswith("550 5.7.1")


async def test_trusted_authentication_results_are_honoured(authenticating_club: Config):
    cfg = authenticating_club
    ours = "Authentication-Results: mx.myclub.org; dkim=pass header.d=example.net header.s=sel\r\n"
    replies = await post(cfg, (ours + RECEIVED_OTHER).encode() + message())
    assert replies[0].startswith("250"), replies
    assert stored_auth(cfg) == ["dkim=pass header.d=example.net; spf=none; by=mx.myclub.org"]


async def test_untrusted_authentication_results_are_ignored_and_removed(authenticating_club: Config):
    cfg = authenticating_club
    forged = "Authentication-Results: mx.myclub.org; dkim=pass header.d=example.net\r\n"
    # below the sender's own Received header: it came with the message
    data = (RECEIVED_OTHER + RECEIVED_OTHER.replace("mx.myclub.org", "relay.example.org") + forged).encode()
    replies = await post(cfg, data + message(), rcpts=("youth@myclub.org", "open@myclub.org"))
    assert replies[0].startswith("550 5.7.1") and replies[1].startswith("250")
    db = sqlite3.connect(cfg.database)
    raw = bytes(db.execute("SELECT raw FROM messages").fetchone()[0])
    db.close()
    assert b"Authentication-Results" not in raw and b"Received: from mail.example.net" in raw
    assert raw.endswith(message().split(b"\r\n\r\n", 1)[1])  # the body is untouched


async def test_dmarc_mode_follows_the_authors_domain_policy(authenticating_club: Config):
    cfg = authenticating_club
    relaxed = message(author="rel@relaxed.example")
    assert (await post(cfg, relaxed, rcpts=("social@myclub.org",), sender="rel@relaxed.example"))[0].startswith("250")
    strict = message(author="sam@strict.example")
    replies = await post(cfg, strict, rcpts=("social@myclub.org", "youth@myclub.org"), sender="sam@strict.example")
    assert replies[0].startswith("550 5.7.1") and "social requires dmarc" in replies[0]
    assert replies[1].startswith("550 5.7.1")


def test_alignment_uses_organizational_domains():
    assert auth.aligned("mail.example.co.uk", "example.co.uk")
    assert auth.aligned("example.net", "lists.example.net")
    assert not auth.aligned("example.co.uk", "other.co.uk")
    assert not auth.aligned("", "example.net")


def test_received_client_reads_our_postfix_header():
    raw = (RECEIVED_OK + "Received: from x (y [203.0.113.1])\r\n\tby z\r\n").encode() + message()
    assert auth.received_client(raw) == ("192.0.2.10", "mail.example.net")
    v6 = b"Received: from h.example.net (h.example.net [IPv6:2001:db8::1])\r\n\tby mx\r\n\r\nx"
    assert auth.received_client(v6) == ("2001:db8::1", "h.example.net")
    assert auth.received_client(b"Subject: none\r\n\r\nx") is None
