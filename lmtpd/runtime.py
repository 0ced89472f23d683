"""The running parts, built once from a configuration: for serve, deliver, the CLI and tests.

:func:`open_runtime` checks the schema, opens the reader and starts the
group-commit writer (with the fan-out ingest needs, or without), builds the
delivery worker if asked, and takes them down again in order, whatever happens
inside. The sender checks and the DKIM signer are built by :func:`make_checker`
and :func:`make_signer`, which a reload calls again with the new configuration.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import dns.asyncresolver
import dns.resolver

from . import auth
from .config import Config
from .copies import Signer
from .delivery import Worker
from .ingest import IngestHandler
from .reminders import Scheduler
from .routes import make_resolver
from .store import Writer, connect_sync, open_database
from .store.outbound import FANOUT

Clock = Callable[[], float]


@dataclass
class Runtime:
    """What a process of lmtpd works with; the database is opened and the writer running."""

    cfg: Config
    clock: Clock
    writer: Writer
    reader: sqlite3.Connection  # reads on the event loop: RCPT and policy lookups, the next due copy
    worker: Worker | None = None

    def ingest(
        self,
        on_accepted: Callable[[], None] | None = None,
        checker: auth.Checker | None = None,
        signer: Signer | None = None,
        cfg: Config | None = None,
    ) -> IngestHandler:
        """The LMTP hooks, storing through this runtime's writer (which must fan out)."""
        return IngestHandler(cfg or self.cfg, self.writer, self.reader, self.clock, on_accepted, checker, signer)

    def reminders(self, signer: Signer | None = None, on_posted: Callable[[], None] | None = None) -> Scheduler:
        """The reminders' scheduler, posting through this runtime's writer (which must fan out)."""
        return Scheduler(self.cfg, self.writer.submit, self.reader, self.clock, signer, on_posted)


def make_checker(cfg: Config) -> auth.Checker:
    """DKIM/SPF/DMARC checks with the configured DNS servers (a blocking resolver: they run in threads)."""
    return auth.Checker(make_resolver(cfg.dns.nameservers, cfg.dns.timeout, dns.resolver.Resolver), cfg.dns.timeout)


def make_signer(cfg: Config) -> Signer | None:
    """The copies' DKIM signer, if a key is configured (:class:`SigningError` if it cannot be read)."""
    return Signer.from_file(cfg.domain, cfg.dkim.selector, cfg.dkim.key_file) if cfg.dkim.key_file else None


@asynccontextmanager
async def open_runtime(
    cfg: Config,
    clock: Clock = time.time,
    *,
    ingest: bool = True,
    deliver: bool = False,
    allow_upgrade: bool = False,
    rng: random.Random | None = None,
    resolver: dns.asyncresolver.Resolver | None = None,
    owner: str | None = None,
) -> AsyncIterator[Runtime]:
    """Database checked, reader open, writer running; a delivery worker if ``deliver``.

    ``ingest``: the writer runs :data:`~lmtpd.store.outbound.FANOUT`, as accepting
    posts needs; a process that only delivers or administers goes without.
    ``rng``, ``resolver`` and ``owner`` go to the worker (tests fix them).
    """
    db = await open_database(cfg.database, allow_upgrade)  # checks the schema
    await db.close()
    reader = connect_sync(cfg.database)
    writer = Writer(cfg.database, work=FANOUT if ingest else None)
    try:
        await writer.start()
        worker = Worker(cfg, writer, reader, clock, rng, resolver, owner) if deliver else None
        try:
            yield Runtime(cfg, clock, writer, reader, worker)
        finally:
            if worker is not None:
                await worker.close()  # stops its lanes, hands back the copies it still holds
    finally:
        await writer.stop()
        reader.close()
