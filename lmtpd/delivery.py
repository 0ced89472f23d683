"""The delivery worker: claim due copies, relay them, record what happened.

``serve`` runs it continuously (woken by ingest right after a commit, so a copy
leaves within moments of its 250); ``queue flush`` runs the same passes from the
command line. A pass groups the claimed copies by destination (the smarthost, or
the recipient domain in MX mode), sends each group over a few sessions that carry
many transactions, and writes every result back in one job, together with any
report to the administrator that the results complete.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Callable

import dns.asyncresolver

from . import queue
from .config import Config
from .relay import Outcome, Session, SessionError, tls_contexts
from .routes import Host, RouteError, make_resolver, resolve
from .store import Writer

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Progress = Callable[[int], None]

SMARTHOST = "[smarthost]"
IDLE_SESSION_SECONDS = 10.0  # close cached sessions unused this long


class Worker:
    def __init__(
        self,
        cfg: Config,
        writer: Writer,
        reader: sqlite3.Connection | None,
        clock: Clock,
        rng: random.Random | None = None,
        resolver: dns.asyncresolver.Resolver | None = None,
    ):
        self.cfg = cfg
        self.writer = writer
        self.reader = reader
        self.clock = clock
        self.rng = rng
        self.owner = queue.lease_owner()
        relay = cfg.relay
        self.smarthost = relay.mode == "smarthost"
        self.resolver = resolver or (None if self.smarthost else make_resolver(cfg.dns.nameservers, cfg.dns.timeout))
        self.contexts = tls_contexts(str(relay.tls_ca_file) if relay.tls_ca_file else None)
        self.slots = asyncio.Semaphore(relay.connections)
        self.verp = cfg.bounces.verp_delimiters if cfg.bounces.verp else ""
        self.idle: dict[str, list[Session]] = {}  # destination -> sessions kept open
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
            await self._close_idle(IDLE_SESSION_SECONDS)
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
        await self._close_idle(0)
        try:
            await self.writer.submit(lambda db: queue.release_leases(db, self.owner))
        except Exception:
            log.exception("could not release leases (they will expire)")

    async def flush(self, queue_id: str | None = None, progress: Progress | None = None) -> Counter[str]:
        """Attempt every pending copy (of one message, or all) now, once; count outcomes."""
        now = self.clock()
        await self.writer.submit(lambda db: queue.make_all_due(db, now, queue_id))
        totals: Counter[str] = Counter()
        while True:
            counts = await self.deliver_due(queue_id, progress)
            if not counts:
                return totals
            totals.update(counts)

    async def deliver_due(self, queue_id: str | None = None, progress: Progress | None = None) -> Counter[str]:
        """One pass: claim a batch of due copies, relay them, record results."""
        now = self.clock()
        batch = self.cfg.relay.batch
        deliveries, copies = await self.writer.submit(
            lambda db: queue.claim(db, self.owner, now, self.cfg.queue.lease, batch, queue_id, self.verp)
        )
        if not deliveries:
            return Counter()
        groups: dict[str, list[queue.Delivery]] = {}
        for d in deliveries:
            groups.setdefault(SMARTHOST if self.smarthost else d.domain, []).append(d)
        recorded: list[asyncio.Future[list[str]]] = []
        unreachable = 0

        def done(d: queue.Delivery, outcome: Outcome) -> None:
            """Record each outcome at once (group commit makes that cheap): a crash then
            resends at most the copies in flight, not a whole batch."""
            nonlocal unreachable
            attempt = queue.Attempt(d, outcome.sent, outcome.permanent, outcome.reply, outcome.remote, outcome.tls)
            at = self.clock()
            recorded.append(
                asyncio.ensure_future(
                    self.writer.submit(lambda db: queue.record(db, [attempt], at, self.cfg, self.rng))
                )
            )
            unreachable += not outcome.remote and not outcome.permanent
            status = "sent" if outcome.sent else "bounced" if outcome.permanent else "deferred"
            log.info(
                "%s: to=<%s>, relay=%s, delay=%.1f, tls=%s, status=%s (%s)",
                d.queue_id, d.recipient, outcome.remote or "none", at - d.created_at,
                outcome.tls or "-", status, outcome.reply,
            )  # fmt: skip
            if progress:
                progress(1)

        await asyncio.gather(*(self._destination(dest, items, copies, done) for dest, items in groups.items()))
        counts: Counter[str] = Counter()
        for states in await asyncio.gather(*recorded):
            counts.update(states)
        counts["unreachable"] = unreachable
        return +counts

    async def _destination(
        self,
        dest: str,
        items: list[queue.Delivery],
        copies: dict[int, bytes],
        done: Callable[[queue.Delivery, Outcome], None],
    ) -> None:
        """Deliver one destination's copies over at most connections_per_destination sessions."""
        try:
            hosts = await self._route(dest)
        except RouteError as exc:
            for d in items:
                done(d, Outcome(0, exc.reply, exc.permanent))
            return
        todo = deque(items)
        limit = self.cfg.relay.connections if self.smarthost else self.cfg.relay.connections_per_destination
        lanes = min(limit, len(items))
        alive = [lanes]  # lanes still able to send: the last one to give up settles the rest
        await asyncio.gather(*(self._lane(dest, hosts, todo, copies, done, alive) for _ in range(lanes)))

    async def _route(self, dest: str) -> list[Host]:
        if self.smarthost:
            return [Host(self.cfg.relay.host, self.cfg.relay.host)]
        assert self.resolver is not None
        return await resolve(dest, self.resolver, self.rng)

    async def _lane(
        self,
        dest: str,
        hosts: list[Host],
        todo: deque[queue.Delivery],
        copies: dict[int, bytes],
        done: Callable[[queue.Delivery, Outcome], None],
        alive: list[int],
    ) -> None:
        """One session's worth of work: transactions until the destination's copies run out.

        A session that breaks (refused connection, 421, dropped mid-transaction) moves
        on to the next MX host; the copy it was carrying goes there too, within the
        attempt. A cached session that turns out closed is simply reopened.
        """
        async with self.slots:
            session = self._cached(dest)
            next_host = 0
            last_error = Outcome(0, f"4.4.1 no host to try for {dest}")
            tries: Counter[int] = Counter()
            while todo:
                if session is None:
                    session, next_host, last_error = await self._open(hosts, next_host, last_error)
                    if session is None:
                        alive[0] -= 1
                        if alive[0] == 0:  # nobody can reach the destination now: next attempt
                            while todo:
                                done(todo.popleft(), last_error)
                        return  # else the lanes that have a session take the rest
                d = todo.popleft()
                outcome = await session.send(d.sender, d.recipient, copies[d.post_id])
                if outcome.session_failed:
                    cached = session.transactions > 0
                    await session.close()
                    session = None
                    if not cached:
                        next_host += 1  # this host failed us: the next one takes over
                    tries[d.id] += 1
                    if next_host < len(hosts) and tries[d.id] <= len(hosts):
                        todo.appendleft(d)
                        last_error = outcome
                        continue
                done(d, outcome)
            alive[0] -= 1
            if alive[0] == 0:  # copies handed back by a lane that broke off after the others ended
                while todo:
                    done(todo.popleft(), last_error)
            if session is not None and session.usable:
                self.idle.setdefault(dest, []).append(session)

    async def _open(self, hosts: list[Host], start: int, last_error: Outcome) -> tuple[Session | None, int, Outcome]:
        """The first host from ``start`` on that takes a session, with its index."""
        for i in range(start, len(hosts)):
            host = hosts[i]
            try:
                session = await Session.open(
                    host, self.cfg.relay, self.cfg.hostname, self.contexts,
                    require_tls=self.smarthost and self.cfg.relay.starttls,
                )  # fmt: skip
                return session, i, last_error
            except SessionError as exc:
                log.info("cannot use %s[%s]: %s", host.name, host.address, exc.reply)
                last_error = Outcome(exc.code, exc.reply, False, host.name if exc.code else "")
        return None, len(hosts), last_error

    def _cached(self, dest: str) -> Session | None:
        sessions = self.idle.get(dest)
        while sessions:
            session = sessions.pop()
            if session.usable and time.monotonic() - session.last_used < IDLE_SESSION_SECONDS:
                return session
            asyncio.get_running_loop().create_task(session.close())
        return None

    async def _close_idle(self, older_than: float) -> None:
        now = time.monotonic()
        for dest in list(self.idle):
            keep = []
            for session in self.idle[dest]:
                if now - session.last_used >= older_than or not session.usable:
                    await session.close()
                else:
                    keep.append(session)
            if keep:
                self.idle[dest] = keep
            else:
                del self.idle[dest]
