"""Direct delivery: a real DNS server on 127.0.0.1, MX hosts on 127.0.0.2, .3 ..."""

from __future__ import annotations

import asyncio
import random
import socket
import sqlite3
import ssl
from collections.abc import AsyncIterator
from email import message_from_bytes
from pathlib import Path

import pytest
import trustme
from aiosmtpd.smtp import SMTP

from lmtpd.config import Config, load
from lmtpd.routes import order_mx
from lmtpd.runtime import open_runtime

from . import dnsserver
from .conftest import Clock, Sink, message, populate, start_sink, write_config

MEMBERS = {
    "anna@example.net": ("Anna", ["youth"]),  # the poster; example.net is not in the test DNS
    "ada@pref.example": ("Ada", ["youth"]),
    "ben@amx.example": ("Ben", ["youth"]),
    "cy@null.example": ("Cy", ["youth"]),
    "di@nx.example": ("Di", ["youth"]),
    "ed@fail.example": ("Ed", ["youth"]),
    "flo@tls.example": ("Flo", ["youth"]),
}


def free_port_on(*hosts: str) -> int:
    """A port that is free on every loopback address given."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            for host in hosts:
                with socket.socket() as t:
                    t.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no common free port")


class Net:
    """DNS, MX hosts and a club configured for direct delivery through them."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.zone = dnsserver.Zone()
        self.port = free_port_on("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
        self.sinks: dict[str, Sink] = {}
        self.cfg: Config | None = None

    async def mx(self, address: str, **kwargs) -> Sink:
        sink = await start_sink(self.port, address, **kwargs)
        self.sinks[address] = sink
        return sink

    async def club(self, relay_extra: str = "", queue_extra: str = "", members: dict = MEMBERS) -> Config:
        transport, dns_port = await dnsserver.start(self.zone)
        self.dns = transport
        config = write_config(
            self.folder,
            "127.0.0.1:8024",
            relay_port=self.port,
            relay_extra=f'mode = "mx"\n{relay_extra}',
            extra=f'[dns]\nnameservers = ["127.0.0.1:{dns_port}"]\n',
            queue_extra=queue_extra,
        )
        self.cfg = load(config)
        await populate(self.cfg, members)
        return self.cfg

    async def post_and_deliver(self, clock: Clock, rng: random.Random | None = None) -> dict:
        assert self.cfg is not None
        return await post_and_deliver(self.cfg, clock, rng)

    def close(self) -> None:
        for sink in self.sinks.values():
            assert sink.server is not None
            sink.server.close()
        if getattr(self, "dns", None):
            self.dns.close()


async def post_and_deliver(cfg: Config, clock: Clock, rng: random.Random | None = None) -> dict[str, sqlite3.Row]:
    """Post once to youth and run one delivery pass; return the deliveries by recipient."""
    async with open_runtime(cfg, clock, deliver=True, rng=rng or random.Random(3)) as runtime:
        replies = await runtime.ingest().decide("anna@example.net", ["youth@myclub.org"], message())
        assert replies[0].startswith("250")
        assert runtime.worker is not None
        await runtime.worker.deliver_due()
    return deliveries(cfg)


def deliveries(cfg: Config) -> dict[str, sqlite3.Row]:
    db = sqlite3.connect(cfg.database)
    db.row_factory = sqlite3.Row
    try:
        return {r["recipient"]: r for r in db.execute("SELECT * FROM deliveries")}
    finally:
        db.close()


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    n = Net(tmp_path)
    yield n
    n.close()


def test_equal_preferences_are_shuffled_and_order_is_kept():
    records = [(20, "c"), (10, "a1"), (10, "a2"), (10, "a3"), (30, "d")]
    seen = set()
    for seed in range(30):
        order = order_mx(list(records), random.Random(seed))
        assert set(order[:3]) == {"a1", "a2", "a3"} and order[3:] == ["c", "d"]
        seen.add(tuple(order[:3]))
    assert len(seen) > 1


async def test_routing_preference_failover_fallback_and_dns_errors(net: Net, clock: Clock):
    z = net.zone
    # pref.example: the best MX (127.0.0.2) does not answer; the second takes the mail
    z.add("pref.example", "MX", "10 mx1.pref.example.")
    z.add("pref.example", "MX", "20 mx2.pref.example.")
    z.add("mx1.pref.example", "A", "127.0.0.2")
    z.add("mx2.pref.example", "A", "127.0.0.3")
    # amx.example: no MX, an address: the implicit MX
    z.add("amx.example", "A", "127.0.0.4")
    z.add("amx.example", "TXT", '"v=spf1 -all"')
    # null.example: RFC 7505 null MX
    z.add("null.example", "MX", "0 .")
    # nx.example: not in the zone at all -> NXDOMAIN; fail.example: SERVFAIL
    z.servfail.add("fail.example")
    z.add("tls.example", "A", "127.0.0.5")  # nobody listens: connection refused
    second = await net.mx("127.0.0.3")
    implicit = await net.mx("127.0.0.4")
    await net.club()

    rows = await net.post_and_deliver(clock)

    assert rows["ada@pref.example"]["state"] == "sent"
    assert rows["ada@pref.example"]["remote_mta"] == "mx2.pref.example"
    assert [r.rcpt for r in second.received] == ["ada@pref.example"]
    assert rows["ben@amx.example"]["state"] == "sent"
    assert [r.rcpt for r in implicit.received] == ["ben@amx.example"]
    assert rows["cy@null.example"]["state"] == "failed"
    assert rows["cy@null.example"]["status"] == "5.1.10"
    assert rows["di@nx.example"]["state"] == "failed"
    assert rows["di@nx.example"]["status"] == "5.1.2"
    assert rows["ed@fail.example"]["state"] == "pending"
    assert rows["ed@fail.example"]["last_reply"].startswith("4.4.3")
    assert rows["flo@tls.example"]["state"] == "pending"
    assert rows["flo@tls.example"]["last_reply"].startswith("4.4.1 tls.example[127.0.0.5]")


async def test_per_recipient_replies(net: Net, clock: Clock):
    members = {f"{name}@one.example": (name, ["youth"]) for name in ("ok", "busy", "gone", "full")}
    members["anna@example.net"] = ("Anna", ["youth"])
    net.zone.add("one.example", "MX", "10 mx.one.example.")
    net.zone.add("mx.one.example", "A", "127.0.0.2")
    sink = await net.mx("127.0.0.2")
    sink.rcpt_replies = {
        "busy@one.example": "451 4.2.1 mailbox busy",
        "gone@one.example": "550 5.1.1 no such user",
        "full@one.example": "552 5.2.2 mailbox full",
    }
    await net.club(members=members, relay_extra="connections_per_destination = 1")
    rows = await net.post_and_deliver(clock)
    assert rows["ok@one.example"]["state"] == "sent"
    assert rows["busy@one.example"]["state"] == "pending"
    assert rows["gone@one.example"]["state"] == "failed" and rows["gone@one.example"]["status"] == "5.1.1"
    assert rows["full@one.example"]["state"] == "pending"  # 552 to RCPT is temporary
    assert sink.sessions == 1  # one connection carried every transaction for the domain


async def test_a_dropped_connection_moves_the_copy_to_the_next_mx(net: Net, clock: Clock):
    members = {"anna@example.net": ("Anna", ["youth"]), "gus@drop.example": ("Gus", ["youth"])}
    net.zone.add("drop.example", "MX", "10 mx1.drop.example.")
    net.zone.add("drop.example", "MX", "20 mx2.drop.example.")
    net.zone.add("mx1.drop.example", "A", "127.0.0.2")
    net.zone.add("mx2.drop.example", "A", "127.0.0.3")
    first = await net.mx("127.0.0.2")
    first.drop_in_data = True
    backup = await net.mx("127.0.0.3")
    await net.club(members=members)
    rows = await net.post_and_deliver(clock)
    assert first.data_started == 1
    assert [r.rcpt for r in backup.received] == ["gus@drop.example"]
    assert rows["gus@drop.example"]["state"] == "sent"
    assert rows["gus@drop.example"]["remote_mta"] == "mx2.drop.example"


async def test_a_dropped_connection_with_no_other_mx_defers(net: Net, clock: Clock):
    members = {"anna@example.net": ("Anna", ["youth"]), "gus@drop.example": ("Gus", ["youth"])}
    net.zone.add("drop.example", "MX", "10 mx1.drop.example.")
    net.zone.add("mx1.drop.example", "A", "127.0.0.2")
    (await net.mx("127.0.0.2")).drop_in_data = True
    await net.club(members=members)
    rows = await net.post_and_deliver(clock)
    assert rows["gus@drop.example"]["state"] == "pending"
    assert "connection lost at end of data" in rows["gus@drop.example"]["last_reply"]


# ------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, name: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(ctx)
    return ctx


class BrokenStartTLS(SMTP):
    """Offers STARTTLS, says go ahead, then hangs up: the handshake fails."""

    async def smtp_STARTTLS(self, arg):
        await self.push("220 2.0.0 Ready to start TLS")
        self.transport.close()


def tls_zone(net: Net) -> None:
    net.zone.add("tls.example", "MX", "10 mx.tls.example.")
    net.zone.add("mx.tls.example", "A", "127.0.0.2")


TLS_MEMBERS = {"anna@example.net": ("Anna", ["youth"]), "flo@tls.example": ("Flo", ["youth"])}


@pytest.mark.parametrize(
    "cert_name, trust_ca, level",
    [
        ("mx.tls.example", False, "encrypted"),  # the test CA is unknown to lmtpd
        ("mx.tls.example", True, "verified"),
        ("someone-else.example", True, "encrypted"),  # trusted CA, wrong name
    ],
)
async def test_starttls_levels(net: Net, clock: Clock, ca, tmp_path: Path, cert_name: str, trust_ca: bool, level: str):
    tls_zone(net)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    sink = await net.mx("127.0.0.2", tls_context=server_context(ca, cert_name))
    await net.club(members=TLS_MEMBERS, relay_extra=f'tls_ca_file = "{ca_file}"' if trust_ca else "")
    rows = await net.post_and_deliver(clock)
    assert rows["flo@tls.example"]["state"] == "sent"
    assert rows["flo@tls.example"]["tls"] == level
    assert len(sink.received) == 1


async def test_a_failed_handshake_falls_back_to_plain_text(net: Net, clock: Clock, ca):
    tls_zone(net)
    sink = await net.mx("127.0.0.2", tls_context=server_context(ca, "mx.tls.example"), protocol=BrokenStartTLS)
    await net.club(members=TLS_MEMBERS)
    rows = await net.post_and_deliver(clock)
    assert rows["flo@tls.example"]["state"] == "sent"
    assert rows["flo@tls.example"]["tls"] == "none"
    assert message_from_bytes(sink.received[0].data)["List-Id"] == '"Youth section" <youth.myclub.org>'


async def test_smarthost_requiring_tls_refuses_plain_text(tmp_path: Path, clock: Clock, sink: Sink):
    config = write_config(tmp_path, "127.0.0.1:8024", relay_port=sink.port, relay_extra="starttls = true")
    cfg = load(config)
    await populate(cfg)
    rows = await post_and_deliver(cfg, clock)
    assert {r["state"] for r in rows.values()} == {"pending"}
    assert all(r["last_reply"].startswith("4.7.4") for r in rows.values())
    assert sink.received == []


async def test_smarthost_with_starttls_and_auth(tmp_path: Path, clock: Clock, ca):
    from aiosmtpd.smtp import AuthResult

    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((mechanism, auth_data.login, auth_data.password, session.ssl is not None))
        return AuthResult(success=auth_data.login == b"lists" and auth_data.password == b"s3cret")

    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    loop = asyncio.get_running_loop()
    sink = Sink()
    ctx = server_context(ca, "127.0.0.1")
    sink.server = await loop.create_server(
        lambda: SMTP(sink, hostname="smarthost.example.net", tls_context=ctx, authenticator=authenticator,
                     auth_required=True),
        "127.0.0.1", 0,
    )  # fmt: skip
    port = sink.server.sockets[0].getsockname()[1]
    config = write_config(
        tmp_path, "127.0.0.1:8024", relay_port=port,
        relay_extra=f'starttls = true\nusername = "lists"\npassword = "s3cret"\ntls_ca_file = "{ca_file}"',
    )  # fmt: skip
    cfg = load(config)
    await populate(cfg)
    rows = await post_and_deliver(cfg, clock)
    sink.server.close()
    assert {r["state"] for r in rows.values()} == {"sent"}
    assert {r["tls"] for r in rows.values()} == {"verified"}
    assert logins and all(ok_tls for *_, ok_tls in logins)
    assert {login for _, login, _, _ in logins} == {b"lists"}


class OneSessionOnly(SMTP):
    """A far end that takes one session at a time and turns others away with 421."""

    active = 0

    async def _handle_client(self):
        if OneSessionOnly.active >= 1:
            await self.push("421 4.7.0 too many connections from your host")
            self.transport.close()
            return
        OneSessionOnly.active += 1
        try:
            await super()._handle_client()
        finally:
            OneSessionOnly.active -= 1


async def test_a_lane_that_cannot_connect_leaves_its_copies_to_the_others(net: Net, clock: Clock):
    members = {f"m{i}@busy.example": (f"M{i}", ["youth"]) for i in range(6)}
    members["anna@example.net"] = ("Anna", ["youth"])
    net.zone.add("busy.example", "MX", "10 mx.busy.example.")
    net.zone.add("mx.busy.example", "A", "127.0.0.2")
    sink = await net.mx("127.0.0.2", protocol=OneSessionOnly)
    await net.club(members=members, relay_extra="connections_per_destination = 3")
    rows = await net.post_and_deliver(clock)
    busy = {a: r for a, r in rows.items() if a.endswith("@busy.example")}
    assert {r["state"] for r in busy.values()} == {"sent"}  # one lane carried them all
    assert len(sink.received) == 6 and sink.sessions == 1
