"""Direct delivery's world: a DNS zone on 127.0.0.1, MX hosts on 127.0.0.2, .3 ..., a club using them."""

from __future__ import annotations

import asyncio
import random
import socket
import sqlite3
from pathlib import Path
from typing import Any

from lmtpd.config import Config, load
from lmtpd.runtime import open_runtime

from . import dnsserver
from .club import Members, message, populate, write_config
from .sink import Sink, start_sink
from .timing import Clock

MX_MEMBERS: Members = {
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
        self.dns: asyncio.DatagramTransport | None = None

    async def mx(self, address: str, **kwargs: Any) -> Sink:
        """An MX host (an aiosmtpd sink) listening on ``address``, at the club's relay port."""
        sink = await start_sink(self.port, address, **kwargs)
        self.sinks[address] = sink
        return sink

    async def club(self, relay_extra: str = "", queue_extra: str = "", members: Members = MX_MEMBERS) -> Config:
        """The club in MX mode, asking the zone's DNS server."""
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

    async def post_and_deliver(self, clock: Clock, rng: random.Random | None = None) -> dict[str, sqlite3.Row]:
        assert self.cfg is not None
        return await post_and_deliver(self.cfg, clock, rng)

    def close(self) -> None:
        for sink in self.sinks.values():
            sink.close()
        if self.dns is not None:
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
    """Every delivery row of the club, by recipient."""
    db = sqlite3.connect(cfg.database)
    db.row_factory = sqlite3.Row
    try:
        return {r["recipient"]: r for r in db.execute("SELECT * FROM deliveries")}
    finally:
        db.close()
