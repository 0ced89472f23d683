"""The delivery worker: claim due copies, relay them, record what happened.

``serve`` runs it continuously (woken by ingest right after a commit, so a copy
leaves within moments of its 250); ``queue flush`` runs it until nothing is due.

As Postfix's queue manager, it keeps claiming while it delivers. Claimed copies
join their destination's backlog (the smarthost, or the recipient domain in MX
mode), and each destination has lanes of its own: sessions that carry one
transaction after another until the backlog is empty. A destination starts with
one lane and earns more (up to ``connections_per_destination``) once a host has
greeted; in MX mode it never takes all ``connections`` slots. So a tarpit holds one
slot and its own copies, while the other destinations and the next claims go on.
Leases are renewed while copies are in flight, so a flush from elsewhere never
takes a copy that is still being worked on. Every outcome is written back at once,
with any report to the administrator that it completes.

Longer than the other stages on purpose: the scheduler (claims, backlogs, lanes,
leases, settling) is one piece of state whose parts only make sense together; a
lane's own logic is the small :class:`_Lane`, the SMTP session is in ``relay``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.asyncresolver

from . import counters, queue
from .config import Config
from .relay import Outcome, Session, SessionError, tls_contexts
from .routes import Host, RouteError, make_resolver, resolve
from .store import Writer, outbound

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Progress = Callable[[int], None]

SMARTHOST = "[smarthost]"
IDLE_SESSION_SECONDS = 10.0  # close cached sessions unused this long
LEASE_CHECK_SECONDS = 1.0  # how often the worker looks whether its leases need renewing
ACTIVE_BATCHES = 4  # copies held at once: at most this many batches (Postfix's active queue)


@dataclass(eq=False)
class _Pass:
    """The copies one claim took; finished when every one has an outcome."""

    left: int
    progress: Progress | None = None
    recorded: list[asyncio.Future[list[str]]] = field(default_factory=list)
    unreachable: int = 0
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    post_ids: set[int] = field(default_factory=set)
    reported: asyncio.Future[None] | None = None  # the pass's reports to the administrator, once it is over

    async def counts(self) -> Counter[str]:
        await self.finished.wait()
        counts: Counter[str] = Counter()
        for states in await asyncio.gather(*self.recorded):
            counts.update(states)
        if self.reported is not None:
            await self.reported
        counts["unreachable"] = self.unreachable
        return +counts


@dataclass(eq=False)
class _Destination:
    """One destination's claimed copies and the lanes working on them."""

    name: str
    backlog: deque[queue.Delivery] = field(default_factory=deque)
    held: int = 0  # claimed, no outcome yet: in the backlog or being carried
    lanes: int = 0  # running, or waiting for a connection slot
    greeted: Host | None = None  # the host that answered: lanes beyond the first start there
    last_error: Outcome = field(default_factory=lambda: Outcome(0, "4.4.1 no host to try", unreachable=True))


class Worker:
    def __init__(
        self,
        cfg: Config,
        writer: Writer,
        reader: sqlite3.Connection | None,
        clock: Clock,
        rng: random.Random | None = None,
        resolver: dns.asyncresolver.Resolver | None = None,
        owner: str | None = None,
    ):
        self.cfg = cfg
        self.writer = writer
        self.reader = reader
        self.clock = clock
        self.rng = rng
        self.owner = owner or queue.lease_owner()
        relay = cfg.relay
        self.smarthost = relay.mode == "smarthost"
        self.destination_class = "smarthost" if self.smarthost else "mx"  # the metrics' only destination label
        self.resolver = resolver or (None if self.smarthost else make_resolver(cfg.dns.nameservers, cfg.dns.timeout))
        self.contexts = tls_contexts(str(relay.tls_ca_file) if relay.tls_ca_file else None)
        self.slots = asyncio.Semaphore(relay.connections)
        # in MX mode one destination never takes every slot: one is always left for the others
        per_destination = min(relay.connections_per_destination, relay.connections - 1)
        self.per_destination = relay.connections if self.smarthost else max(1, per_destination)
        self.verp = cfg.bounces.verp_delimiters if cfg.bounces.verp else ""
        self.idle: dict[str, list[Session]] = {}  # destination -> sessions kept open
        self._dests: dict[str, _Destination] = {}
        self._flight: dict[int, tuple[_Pass, _Destination]] = {}  # delivery id -> its pass, destination
        self._copies: dict[int, bytes] = {}  # post id -> the bytes that go out
        self._copy_users: Counter[int] = Counter()  # post id -> copies in flight that need them
        self._lanes: set[asyncio.Task[None]] = set()
        self._reporting: set[asyncio.Future[None]] = set()  # end-of-pass report jobs, kept from the GC
        self._keeper: asyncio.Task[None] | None = None
        self._renewed_at = 0.0  # every lease in flight runs until at least this + lease
        self._refill = False  # the last claim was held back by limits: claim again once room is made
        self._settled_since_claim = 0
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._closing = False

    def wake(self) -> None:
        """Called after ingest committed new copies."""
        self._wakeup.set()

    async def run(self) -> None:
        """Deliver until :meth:`stop`; sleeps until woken, a retry is due or lanes made room.

        Claiming never waits for a lane: copies for other destinations, and new posts,
        are claimed and sent while a slow host keeps its own lanes busy.
        """
        released = await self.writer.submit(queue.release_dead_leases)
        if released:
            log.info("released %d copies claimed by a process that is gone", released)
        now = self.clock()
        if await self.writer.submit(lambda db: queue.report_left_over(db, now, self.cfg)):
            log.info("queued reports about failures a previous process recorded but did not report")
        while not self._stopping:
            self._wakeup.clear()
            claimed = 0
            try:
                claimed = await self._fill()
                due = outbound.next_due(self.reader) if self.reader is not None else None
            except Exception:
                log.exception("delivery pass failed; retrying shortly")
                due = None
            await self._close_idle(IDLE_SESSION_SECONDS)
            now = self.clock()
            if due is None or (due <= now and not claimed):
                delay = 5.0  # nothing due, or only copies that wait for room in their lanes
            else:
                delay = min(max(due - now, 0.05), 5.0)
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=delay)
            except TimeoutError:
                pass
        while self._lanes:  # the lanes finish what they hold (stop_worker bounds the wait)
            await asyncio.wait(set(self._lanes))

    async def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()

    async def close(self) -> None:
        """Stop the lanes, close relay sessions and hand back any row still leased to us."""
        self._stopping = self._closing = True
        tasks = [*self._lanes, *([self._keeper] if self._keeper else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._reporting, return_exceptions=True)  # the last passes' reports
        await self._close_idle(0)
        try:
            await self.writer.submit(lambda db: outbound.release_leases(db, self.owner))
        except Exception:
            log.exception("could not release leases (they will expire)")

    async def flush(self, queue_id: str | None = None, progress: Progress | None = None) -> Counter[str]:
        """Attempt every pending copy (of one message, or all) now, once; count outcomes."""
        now = self.clock()
        await self.writer.submit(lambda db: outbound.make_all_due(db, now, queue_id))
        passes: list[_Pass] = []
        while True:
            self._wakeup.clear()
            await self._fill(queue_id, progress, passes)
            if not self._flight:
                reporting = [t for t in self._reporting if not t.done()]
                if not reporting:
                    break
                await asyncio.gather(*reporting)  # the reports the passes queued go out in this flush too
                continue
            await self._wakeup.wait()  # room was made, or everything has an outcome
        totals: Counter[str] = Counter()
        for p in passes:
            totals.update(await p.counts())
        return +totals

    async def deliver_due(self, queue_id: str | None = None, progress: Progress | None = None) -> Counter[str]:
        """One pass: claim a batch of due copies, relay them, record results."""
        p, _ = await self._claim(queue_id, progress)
        return await p.counts() if p is not None else Counter()

    # ------------------------------------------------------------ claiming

    async def _fill(
        self, queue_id: str | None = None, progress: Progress | None = None, keep: list[_Pass] | None = None
    ) -> int:
        """Claim due copies while there is room for them; return how many."""
        total = 0
        while not self._stopping:
            p, full = await self._claim(queue_id, progress)
            if p is None:
                break
            total += p.left
            if keep is not None:
                keep.append(p)
            if not full:
                break
        return total

    async def _claim(self, queue_id: str | None, progress: Progress | None) -> tuple[_Pass | None, bool]:
        """Claim as many due copies as there is room for and hand them to their lanes.

        Room: ``batch`` per claim, as many batches in flight as ACTIVE_BATCHES, and at
        most a batch per destination; a destination that holds that many is skipped,
        so the copies of the others are not crowded out by a slow one. Returns the
        pass and whether the claim was full (more may be due).
        """
        batch = self.cfg.relay.batch
        limit = min(batch, batch * ACTIVE_BATCHES - len(self._flight))
        skip: tuple[str, ...] = ()
        if self.smarthost:
            dest = self._dests.get(SMARTHOST)
            limit = min(limit, batch - (dest.held if dest else 0))
        else:
            skip = tuple(sorted(name for name, d in self._dests.items() if d.held >= batch))
        self._refill = limit < batch or bool(skip)
        self._settled_since_claim = 0
        if limit <= 0:
            return None, False
        now = self.clock()
        lease = self.cfg.queue.lease
        deliveries, copies = await self.writer.submit(
            lambda db: queue.claim(db, self.owner, now, lease, limit, queue_id, self.verp, skip)
        )
        if not deliveries:
            return None, False
        if not self._flight:
            self._renewed_at = now
        p = _Pass(len(deliveries), progress)
        self._copies.update(copies)
        touched: dict[str, _Destination] = {}
        for d in deliveries:
            name = SMARTHOST if self.smarthost else d.domain
            dest = self._dests.get(name)
            if dest is None:
                dest = self._dests[name] = _Destination(
                    name, last_error=Outcome(0, f"4.4.1 no host to try for {name}", unreachable=True)
                )
            dest.backlog.append(d)
            dest.held += 1
            self._flight[d.id] = (p, dest)
            p.post_ids.add(d.post_id)
            self._copy_users[d.post_id] += 1
            touched[name] = dest
        for dest in touched.values():
            self._start_lanes(dest)
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.get_running_loop().create_task(self._keep_leases(), name="lmtpd-leases")
        return p, len(deliveries) == limit

    async def _keep_leases(self) -> None:
        """While copies are in flight, renew their leases once a third of the lease has gone.

        Sessions may take long (a tarpit, a 10-minute final reply); without this a
        copy could outlive its lease and a flush from elsewhere send it again. The
        worker's clock decides, so tests can move time; the check runs every second.
        """
        lease = self.cfg.queue.lease
        while self._flight:
            await asyncio.sleep(LEASE_CHECK_SECONDS)
            now = self.clock()
            if not self._flight or now - self._renewed_at < lease / 3:
                continue
            ids, until = sorted(self._flight), now + lease
            try:
                kept = await self.writer.submit(
                    lambda db, ids=ids, until=until: outbound.renew_leases(db, self.owner, ids, until)
                )
            except Exception:
                log.exception("could not renew leases; trying again")
                continue
            self._renewed_at = now
            lost = [i for i in ids if i not in kept and i in self._flight]
            if lost:
                self._drop(lost)

    def _drop(self, ids: list[int]) -> None:
        """Copies whose lease is no longer ours: not sent from here (one already in a
        transaction cannot be called back)."""
        lost = set(ids)
        for dest in {self._flight[i][1] for i in ids}:
            dropped = [d for d in dest.backlog if d.id in lost]
            for d in dropped:
                dest.backlog.remove(d)
                p, _ = self._flight.pop(d.id)
                log.warning("%s: to=<%s>: lease lost; left to its new owner", d.queue_id, d.recipient)
                self._finish(p, dest, d.post_id)

    # ------------------------------------------------------------- lanes

    def _start_lanes(self, dest: _Destination) -> None:
        """Lanes up to the destination's limit, one until a host has greeted."""
        if self._closing:
            return
        want = min(self.per_destination if dest.greeted is not None else 1, dest.held)
        while dest.lanes < want:
            dest.lanes += 1
            task = asyncio.get_running_loop().create_task(self._lane(dest), name=f"lmtpd-lane {dest.name}")
            self._lanes.add(task)
            task.add_done_callback(self._lanes.discard)

    async def _lane(self, dest: _Destination) -> None:
        """One lane's life; the last lane to give up settles what it could not send."""
        try:
            await self._work(dest)
        except Exception as exc:
            log.exception("delivery to %s failed", dest.name)
            dest.last_error = Outcome(0, f"4.3.0 local error: {exc}")
        finally:
            dest.lanes -= 1
            if dest.lanes == 0 and not self._closing:
                while dest.backlog:  # nobody can reach the destination now: next attempt
                    self._settle(dest.backlog.popleft(), dest.last_error)
            self._forget(dest)

    async def _work(self, dest: _Destination) -> None:
        """One lane: the route first (a slow DNS answer holds no connection), then a slot and a session."""
        try:
            hosts = await self._route(dest.name)
        except RouteError as exc:
            outcome = Outcome(0, exc.reply, exc.permanent, unreachable=not exc.permanent)
            while dest.backlog:
                self._settle(dest.backlog.popleft(), outcome)
            return
        async with self.slots:
            await _Lane(self, dest, hosts).run()

    def _settle(self, d: queue.Delivery, outcome: Outcome) -> None:
        """Record one outcome at once (group commit makes that cheap): a crash then
        resends at most the copies in flight, not a whole batch."""
        entry = self._flight.pop(d.id, None)
        if entry is None:
            return
        p, dest = entry
        attempt = queue.Attempt(d, outcome.sent, outcome.permanent, outcome.reply, outcome.remote, outcome.tls)
        at = self.clock()
        recorded = asyncio.ensure_future(
            self.writer.submit(lambda db: queue.record(db, [attempt], at, self.cfg, self.rng, report=False))
        )
        recorded.add_done_callback(_report_failed_record)
        p.recorded.append(recorded)
        p.unreachable += outcome.unreachable
        status = "sent" if outcome.sent else "bounced" if outcome.permanent else "deferred"
        counters.RELAY_ATTEMPTS.labels(status, self.destination_class).inc()
        log.info(
            "%s: to=<%s>, relay=%s, delay=%.1f, tls=%s, status=%s (%s)",
            d.queue_id, d.recipient, outcome.remote or "none", at - d.created_at,
            outcome.tls or "-", status, outcome.reply,
        )  # fmt: skip
        if p.progress:
            p.progress(1)
        self._finish(p, dest, d.post_id)

    def _finish(self, p: _Pass, dest: _Destination, post_id: int) -> None:
        """Bookkeeping once a copy leaves the worker's hands."""
        dest.held -= 1
        self._copy_users[post_id] -= 1
        if self._copy_users[post_id] <= 0:
            del self._copy_users[post_id]
            self._copies.pop(post_id, None)
        p.left -= 1
        if p.left == 0:
            p.reported = task = asyncio.ensure_future(self._report(p))
            self._reporting.add(task)
            task.add_done_callback(self._reporting.discard)
            p.finished.set()
        self._forget(dest)
        self._settled_since_claim += 1
        if not self._flight or (self._refill and self._settled_since_claim >= max(1, self.cfg.relay.batch // 2)):
            self._wakeup.set()  # room for another claim

    async def _report(self, p: _Pass) -> None:
        """The pass is over: queue the reports it made due, at most one per post (as
        Postfix reports at the end of a delivery, not when a message leaves the queue)."""
        await asyncio.gather(*p.recorded, return_exceptions=True)
        at, post_ids = self.clock(), sorted(p.post_ids)
        try:
            queued = await self.writer.submit(lambda db: queue.report_pass(db, post_ids, at, self.cfg))
        except Exception:
            log.exception("could not queue the reports of a delivery pass (a later pass over the post tries again)")
            return
        if queued:
            self.wake()

    def _forget(self, dest: _Destination) -> None:
        if dest.lanes == 0 and dest.held == 0 and self._dests.get(dest.name) is dest:
            del self._dests[dest.name]

    async def _route(self, dest: str) -> list[Host]:
        if self.smarthost:
            return [Host(self.cfg.relay.host, self.cfg.relay.host)]
        assert self.resolver is not None
        return await resolve(dest, self.resolver, self.rng)

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
                last_error = Outcome(
                    exc.code, exc.reply, False, host.name if exc.code else "", unreachable=not exc.code
                )
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


class _Lane:
    """One session's worth of work for a destination: the session, the host it is on,
    the copy in the current transaction, and when to stop.

    It stops when the backlog is empty or no host takes a session (the other lanes
    take the rest; the destination's last lane settles it). A session that breaks
    (refused, 421, dropped mid-transaction) moves on to the next MX host, and the
    copy it was carrying goes there too, within the attempt; a cached session that
    turns out closed is simply reopened on the same host.
    """

    def __init__(self, worker: Worker, dest: _Destination, hosts: list[Host]):
        self.worker = worker
        self.dest = dest
        self.hosts = hosts
        self.session = worker._cached(dest.name)
        self.next_host = hosts.index(dest.greeted) if dest.greeted in hosts else 0  # hosts before it failed
        self.tries: Counter[int] = Counter()  # sessions that broke under each copy
        self.carrying: queue.Delivery | None = None

    async def run(self) -> None:
        try:
            while self.dest.backlog and await self._connected():
                await self._send(self.dest.backlog.popleft())
        except Exception as exc:
            if self.carrying is not None:  # settled, and the session closed below: it is in doubt
                self.worker._settle(self.carrying, Outcome(0, f"4.3.0 local error: {exc}"))
            raise
        finally:
            self._park()

    async def _connected(self) -> bool:
        """A session to send on, opened on the next host if need be; False if no host takes one."""
        dest = self.dest
        if self.session is None:
            self.session, self.next_host, dest.last_error = await self.worker._open(
                self.hosts, self.next_host, dest.last_error
            )
            if self.session is None:
                return False
        if dest.greeted is None:  # the destination answers: more lanes may go
            dest.greeted = self.session.host
            self.worker._start_lanes(dest)
        return bool(dest.backlog)  # other lanes may have taken it all meanwhile

    async def _send(self, d: queue.Delivery) -> None:
        assert self.session is not None
        self.carrying = d
        started = time.monotonic()
        outcome = await self.session.send(d.sender, d.recipient, self.worker._copies[d.post_id])
        counters.RELAY_SECONDS.labels(self.worker.destination_class).observe(time.monotonic() - started)
        if not (outcome.session_failed and await self._send_elsewhere(d, outcome)):
            self.worker._settle(d, outcome)
        self.carrying = None

    async def _send_elsewhere(self, d: queue.Delivery, outcome: Outcome) -> bool:
        """The session broke under ``d``: True if ``d`` goes first in line for another try."""
        assert self.session is not None
        reused = self.session.transactions > 0  # a cached session going stale is no fault of the host
        await self.session.close()
        self.session = None
        if not reused:
            self.next_host += 1
        self.tries[d.id] += 1
        if self.next_host < len(self.hosts) and self.tries[d.id] <= len(self.hosts):
            self.dest.backlog.appendleft(d)
            self.dest.last_error = outcome
            return True
        return False

    def _park(self) -> None:
        """Keep a healthy session for the next copies; close one cut off mid-transaction."""
        if self.session is None:
            return
        if self.carrying is None and self.session.usable and not self.worker._closing:
            self.worker.idle.setdefault(self.dest.name, []).append(self.session)
        else:
            self.session.smtp.close()


def _report_failed_record(future: asyncio.Future[list[str]]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("could not record an outcome (the copy is attempted again): %r", future.exception())
