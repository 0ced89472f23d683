"""The delivery worker: claim due copies, relay them, record what happened.

``serve`` runs it continuously (woken by ingest right after a commit, so a copy
leaves within moments of its 250); ``queue flush`` runs the same passes once from
the command line. Results are written back in one job per batch.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from collections import Counter
from collections.abc import Callable

from . import queue
from .config import Config
from .lists import outgoing_copy
from .relay import Connection
from .store import Writer

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class Worker:
    def __init__(
        self,
        cfg: Config,
        writer: Writer,
        reader: sqlite3.Connection | None,
        clock: Clock,
        rng: random.Random | None = None,
    ):
        self.cfg = cfg
        self.writer = writer
        self.reader = reader
        self.clock = clock
        self.rng = rng
        self.owner = queue.lease_owner()
        self.connections = [Connection(cfg.relay, cfg.hostname) for _ in range(cfg.relay.connections)]
        self._wakeup = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        """Called after ingest committed new copies."""
        self._wakeup.set()

    async def run(self) -> None:
        """Deliver until :meth:`stop`; sleeps until woken or until a retry is due."""
        released = await self.writer.submit(queue.release_dead_leases)
        if released:
            log.info("released %d copies claimed by a process that is gone", released)
        while not self._stopping:
            try:
                if await self.deliver_due():
                    continue
                due = queue.next_due(self.reader) if self.reader is not None else None
            except Exception:
                log.exception("delivery pass failed; retrying shortly")
                due = None
            delay = 5.0 if due is None else min(max(due - self.clock(), 0.05), 5.0)
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=delay)
            except TimeoutError:
                pass
            self._wakeup.clear()

    async def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()

    async def close(self) -> None:
        """Close relay sessions and hand back any row still leased to us."""
        for conn in self.connections:
            await conn.close()
        try:
            await self.writer.submit(lambda db: queue.release_leases(db, self.owner))
        except Exception:
            log.exception("could not release leases (they will expire)")

    async def flush(self) -> Counter[str]:
        """Attempt every pending copy now, once; return counts by outcome."""
        now = self.clock()
        await self.writer.submit(lambda db: queue.make_all_due(db, now))
        totals: Counter[str] = Counter()
        while True:
            counts = await self.deliver_due()
            if not counts:
                return totals
            totals.update(counts)

    async def deliver_due(self) -> Counter[str]:
        """One pass: claim a batch of due copies, relay them, record results."""
        now = self.clock()
        batch = self.cfg.relay.batch
        deliveries, content = await self.writer.submit(
            lambda db: queue.claim(db, self.owner, now, self.cfg.queue.lease, batch)
        )
        if not deliveries:
            return Counter()
        copies = {post_id: outgoing_copy(raw, headers) for post_id, (raw, headers) in content.items()}
        todo: asyncio.Queue[queue.Delivery] = asyncio.Queue()
        for d in deliveries:
            todo.put_nowait(d)
        results: list[tuple[queue.Result, float]] = []
        senders = [self._sender(conn, todo, copies, results) for conn in self.connections]
        await asyncio.gather(*senders)
        done = self.clock()
        states = await self.writer.submit(
            lambda db: queue.record(db, results, done, self.cfg.queue, self.rng)
        )
        counts = Counter(states)
        counts["unreachable"] = sum(1 for result, _ in results if result.code == 0)
        return +counts

    async def _sender(
        self,
        conn: Connection,
        todo: asyncio.Queue[queue.Delivery],
        copies: dict[int, bytes],
        results: list[tuple[queue.Result, float]],
    ) -> None:
        relay = f"{self.cfg.relay.host}:{self.cfg.relay.port}"
        while not todo.empty():
            d = todo.get_nowait()
            try:
                code, reply = await conn.send(d.sender, d.recipient, copies[d.post_id])
            except Exception as exc:  # a bug must defer the copy, not lose it
                log.exception("%s: relay error for <%s>", d.queue_id, d.recipient)
                code, reply = 0, f"4.3.0 internal error: {type(exc).__name__}"
            result = queue.Result(d.id, code, reply)
            results.append((result, d.created_at))
            status = "sent" if result.sent else "bounced" if result.permanent else "deferred"
            log.info(
                "%s: to=<%s>, relay=%s, delay=%.1f, status=%s (%s)",
                d.queue_id,
                d.recipient,
                relay,
                self.clock() - d.created_at,
                status,
                reply,
            )
