"""Bounded fuzz of the Postfix policy service (SMTPD_POLICY_README protocol).

Random connections send random attribute sets: valid Postfix requests, non-UTF-8
bytes, more than 100 attributes, lines without '=', empty names, huge values
below the line limit, other ``request=`` values, several requests pipelined on
one connection, CRLF line ends, and random disconnects.

Asserted:

1. each complete request (ended by an empty line) gets exactly one reply,
   ``action=<action>\\n\\n``, where the action is DUNNO, OK, DEFER_IF_PERMIT text,
   REJECT text or ``NNN X.Y.Z text`` (4xx/5xx with a matching enhanced code),
   without control characters, in UTF-8;
2. the connection stays usable: a known request after the fuzzed ones gets its
   known answer next (so nothing was missing and nothing extra);
3. unknown attributes do not change a refusal into DUNNO/OK (a stranger's post
   padded past 100 attributes must still be refused or deferred);
4. the service is alive at the end.

More sessions or other seeds locally (see tests/helpers/fuzzkit.py):
    LMTPD_FUZZ_SEED=1,2,3 LMTPD_FUZZ_SESSIONS=3000 python -m pytest -q tests/test_fuzz_policy.py
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lmtpd.config import Config

from .helpers import fuzzkit
from .helpers.club import new_club, running
from .helpers.sink import Sink
from .helpers.timing import Clock

SEEDS = fuzzkit.seeds([4404, 5505])
SESSIONS = fuzzkit.sessions(400)  # connections per seed
SECONDS = float(os.environ.get("LMTPD_FUZZ_SECONDS", "5"))  # per seed: a safety net (a run takes ~0.5 s)
REPLY_TIMEOUT = 2.0
MAX_LINE = 64 * 1024  # the service's line limit (lmtpd.policy.MAX_LINE)
ACTION = re.compile(r"^(?:DUNNO|OK|DEFER_IF_PERMIT \S.*|REJECT \S.*|([45])\d\d ([45])\.\d{1,3}\.\d{1,3} \S.*)$", re.S)
LETS_THROUGH = ("DUNNO", "OK")
FIRST = (
    "service alive",
    "padding lets a refused request through",
    "no reply",
    "connection closed",
    "connection not usable after the requests",
    "malformed reply",
)


@pytest.fixture
async def fuzz_policy(short_dir: Path, sink: Sink, clock: Clock) -> AsyncIterator[Config]:
    """The club, its service running with a policy socket and no delivery."""
    cfg = await new_club(
        short_dir,
        relay_port=sink.port,
        extra=f'[policy]\nlisten = "unix:{short_dir}/policy.sock"\n',
        relay_extra="deliver = false\n",
    )
    async with running(cfg, clock):
        yield cfg


# ------------------------------------------------------------ the generator

Attrs = list[tuple[bytes, bytes | None]]  # a None value: a line without "="


def base(sender: bytes, recipient: bytes, **more: bytes) -> Attrs:
    """Attributes in the order Postfix sends them (abridged)."""
    attrs = {
        b"request": b"smtpd_access_policy",
        b"protocol_state": b"RCPT",
        b"protocol_name": b"ESMTP",
        b"client_address": b"192.0.2.10",
        b"client_name": b"mail.example.net",
        b"reverse_client_name": b"mail.example.net",
        b"helo_name": b"mail.example.net",
        b"sender": sender,
        b"recipient": recipient,
        b"recipient_count": b"0",
        b"queue_id": b"",
        b"instance": b"123.456.7",
        b"size": b"1234",
        b"etrn_domain": b"",
        b"stress": b"",
        b"sasl_method": b"",
        b"sasl_username": b"",
        b"ccert_subject": b"",
        b"ccert_fingerprint": b"",
        b"encryption_protocol": b"",
        b"encryption_cipher": b"",
        b"encryption_keysize": b"0",
        b"policy_context": b"",
        b"server_address": b"192.0.2.1",
        b"server_port": b"25",
    }
    attrs.update({k.encode(): v for k, v in more.items()})
    return list(attrs.items())


def padding(count: int, tag: bytes = b"x") -> Attrs:
    return [(b"unknown_attribute_%d" % i, tag * (i % 7)) for i in range(count)]


def serialize(attrs: Attrs, eol: bytes = b"\n") -> bytes:
    return b"".join(name + (b"" if value is None else b"=" + value) + eol for name, value in attrs) + eol


SENDERS = [
    b"anna@example.net",
    b"ANNA@Example.NET",
    b"bob@example.net",
    b"dave@example.com",
    b"stranger@example.org",
    b"x@example.org",
    b"",
    b"mailer-daemon@example.org",
    b"x\xff@example.org",
    b"an\x00na@example.net",
    b"an\rna@example.net",
    "zoë@example.org".encode(),
    b"no-at-sign",
    b"@",
    b"s" * 2000 + b"@example.org",
]

RECIPIENTS = [
    b"youth@myclub.org",
    b"trainers@myclub.org",
    b"Youth@MyClub.ORG",
    b"youth+tag@myclub.org",
    b"youth-bounces@myclub.org",
    b"youth-bounces+bob=example.net@myclub.org",
    b"youth-request@myclub.org",
    b"trainers-owner@myclub.org",
    b"chess@myclub.org",
    b"chess-bounces@myclub.org",
    b"admin@myclub.org",
    b"someone@example.com",
    b"",
    b"youth+\xff@myclub.org",
    b"you\xffth@myclub.org",
    b"youth+a\rb@myclub.org",
    b"chess\x00@myclub.org",
    b"chess\r@myclub.org",
    "yöuth@myclub.org".encode(),
    b"youth+" + b"e" * 2000 + b"@myclub.org",
    b"no-at-sign",
]

STATES = [b"RCPT"] * 8 + [b"DATA", b"END-OF-MESSAGE", b"CONNECT", b"rcpt", b"\xff", b""]
REQUESTS = [b"smtpd_access_policy"] * 10 + [b"junk", b"", b"SMTPD_ACCESS_POLICY", b"smtpd_access_policy\xff"]


@dataclass
class Req:
    data: bytes
    complete: int  # empty lines in it: how many replies the service owes
    overlong: bool = False  # a line over the limit: the service drops the connection
    reference: bytes | None = None  # the same request without the padding, to compare


def fuzz_request(rng: random.Random) -> Req:
    sender, recipient = rng.choice(SENDERS), rng.choice(RECIPIENTS)
    if rng.random() < 0.25:  # the interesting pair: a stranger posting to a list
        sender, recipient = b"stranger@example.org", rng.choice([b"youth@myclub.org", b"trainers@myclub.org"])
    attrs = base(sender, recipient, protocol_state=rng.choice(STATES), request=rng.choice(REQUESTS))
    eol = b"\r\n" if rng.random() < 0.05 else b"\n"
    reference = None
    roll = rng.random()
    if roll < 0.25:  # more than 100 attributes, anywhere
        reference = serialize(attrs, eol)
        pad = padding(rng.choice([80, 101, 150, 400]))
        at = rng.choice([1, 7, len(attrs)])
        attrs[at:at] = pad
    elif roll < 0.32:
        attrs.insert(rng.randrange(len(attrs)), (b"no equals sign here", None))
    elif roll < 0.38:
        attrs.insert(rng.randrange(len(attrs)), (b"", b"empty name"))
    elif roll < 0.44:
        attrs.insert(rng.randrange(len(attrs)), (rng.choice([b"na\xffme", b"na me", b"na-me", b"\x00"]), b"v"))
    elif roll < 0.50:
        i = rng.randrange(len(attrs))
        attrs[i] = (attrs[i][0], (attrs[i][1] or b"") + b"\xff\xfe\x00")
    elif roll < 0.55:
        i = rng.randrange(len(attrs))
        attrs[i] = (attrs[i][0], b"v" * rng.choice([30_000, 60_000]))  # huge, below the limit
    elif roll < 0.58:
        attrs.append((b"recipient", rng.choice(RECIPIENTS)))  # duplicate attribute
    elif roll < 0.60:
        i = rng.randrange(len(attrs))
        attrs[i] = (attrs[i][0], b"w" * (MAX_LINE + 10))  # over the limit
        data = serialize(attrs, eol)
        return Req(data, 0, overlong=True)
    data = serialize(attrs, eol)
    return Req(data, complete_requests(data), reference=reference)


def complete_requests(data: bytes) -> int:
    """How many requests the bytes end, as the service reads them (an empty line each)."""
    return sum(1 for line in data.split(b"\n")[:-1] if not line.rstrip(b"\r"))


SENTINEL = serialize(base(b"anna@example.net", b"youth@myclub.org"))
STRANGER = serialize(base(b"stranger@example.org", b"youth@myclub.org"))


# --------------------------------------------------------------- one session


def check_reply(raw: bytes) -> str | None:
    """Why a reply is malformed, or None."""
    if not raw.startswith(b"action=") or not raw.endswith(b"\n\n"):
        return "not action=...\\n\\n"
    body = raw[len(b"action=") : -2]
    if b"\n" in body:
        return "more than one line"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8"
    if re.search(r"[\x00-\x1f\x7f]", text):
        return "control character in the action"
    match = ACTION.match(text)
    if match is None:
        return "unknown action"
    if match[1] and match[1] != match[2]:
        return "enhanced code class differs from reply code"
    return None


@dataclass
class Stats:
    sessions: int = 0
    requests: int = 0
    actions: Counter = field(default_factory=Counter)

    def __str__(self) -> str:
        return f"[{self.sessions} connections, {self.requests} requests answered]"


class Session:
    def __init__(self, seed: int, index: int, findings: fuzzkit.Findings, stats: Stats):
        self.seed, self.index = seed, index
        self.rng = random.Random(f"{seed}:{index}")
        self.findings, self.stats = findings, stats
        self.tr = fuzzkit.Transcript()

    def fail(self, check: str, shape: str, detail: str) -> None:
        self.tr.note(f"VIOLATION [{check}] {detail}")
        self.findings.add(check, shape, detail, self.seed, self.index, self.tr)

    def sent(self, data: bytes) -> None:
        if len(data) > 3000:
            self.tr.sent_body(data)
        else:
            self.tr.sent(data)

    async def reply(self, what: str) -> str | None:
        """One reply, checked; None if the connection is over."""
        try:
            raw = await asyncio.wait_for(self.reader.readuntil(b"\n\n"), REPLY_TIMEOUT)
        except TimeoutError:
            self.fail("no reply", what, f"no reply to the {what} within {REPLY_TIMEOUT}s")
            return None
        except asyncio.IncompleteReadError as e:
            if e.partial:
                self.tr.got(e.partial)
            self.tr.note("connection closed by the service")
            self.fail("connection closed", what, f"EOF instead of the reply to the {what}")
            return None
        except (ConnectionError, asyncio.LimitOverrunError) as e:
            self.fail("connection closed", what, repr(e))
            return None
        self.tr.got(raw)
        self.stats.requests += 1
        problem = check_reply(raw)
        if problem:
            text = raw.decode("utf-8", "replace")
            self.fail("malformed reply", f"{problem}: {fuzzkit.normalize(text)}", repr(raw[:300]))
        action = raw[len(b"action=") : -2].decode("utf-8", "replace")
        self.stats.actions[re.sub(r"<[^>]*>", "<>", action)[:50]] += 1
        return action

    async def write(self, data: bytes) -> bool:
        self.sent(data)
        try:
            self.writer.write(data)
            await self.writer.drain()
            return True
        except ConnectionError as e:
            self.fail("connection closed", "write", repr(e))
            return False

    async def run(self, path: str) -> None:
        try:
            self.reader, self.writer = await asyncio.open_unix_connection(path, limit=1 << 20)
        except OSError as e:
            self.fail("service alive", "cannot connect", repr(e))
            raise
        try:
            await self.script()
        finally:
            self.writer.close()

    async def script(self) -> None:
        reqs = [fuzz_request(self.rng) for _ in range(self.rng.choice([1, 1, 2, 3, 5]))]
        overlong = next((i for i, r in enumerate(reqs) if r.overlong), None)
        if overlong is not None:
            reqs = reqs[: overlong + 1]
        pipelined = self.rng.random() < 0.5
        disconnect = self.rng.random() < 0.1
        if pipelined:
            batch = b"".join((r.reference or b"") + r.data for r in reqs)
            if not await self.write(batch):
                return
            if disconnect and self.rng.random() < 0.5:
                self.tr.note("client disconnects without reading the replies")
                return
        for req in reqs:
            unpadded = None
            for data, what in ((req.reference, "unpadded twin"), (req.data, "request")):
                if data is None:
                    continue
                if req.overlong and data is req.data:
                    if not pipelined and not await self.write(data):
                        return
                    await self.expect_close()
                    return
                if not pipelined:
                    if disconnect and self.rng.random() < 0.3:
                        cut = self.rng.randrange(1, len(data))
                        await self.write(data[:cut])
                        self.tr.note(f"client disconnects mid-request after {cut} bytes")
                        return
                    if not await self.write(data):
                        return
                count = complete_requests(data)
                actions = []
                for _ in range(count):
                    action = await self.reply(what)
                    if action is None:
                        return
                    actions.append(action)
                if what == "unpadded twin":
                    unpadded = actions[-1] if actions else None
                elif req.reference is not None and actions:
                    self.compare(unpadded, actions[-1])
        if disconnect:
            self.tr.note("client disconnects without the closing check")
            return
        # the connection is still in step and usable: a known request, its known answer next
        if not await self.write(SENTINEL):
            return
        action = await self.reply("closing check")
        if action is not None and action != "DUNNO":
            self.fail("connection not usable after the requests", fuzzkit.normalize(action), f"got {action!r}")

    def compare(self, unpadded: str | None, padded: str) -> None:
        if unpadded is None or unpadded.startswith(LETS_THROUGH):
            return
        if padded.startswith(LETS_THROUGH):
            self.fail(
                "padding lets a refused request through",
                f"{fuzzkit.normalize(unpadded)} -> {padded}",
                f"without unknown attributes: {unpadded!r}; with them: {padded!r}",
            )

    async def expect_close(self) -> None:
        """A line over the limit: replies owed so far may come, then the service hangs up."""
        try:
            rest = await asyncio.wait_for(self.reader.read(), REPLY_TIMEOUT)
        except TimeoutError:
            self.fail("no reply", "overlong line", "the service neither answered nor closed")
            return
        except ConnectionError:
            return
        if rest:
            self.tr.got(rest)
            for raw in rest.split(b"\n\n")[:-1]:
                problem = check_reply(raw + b"\n\n")
                if problem:
                    self.fail("malformed reply", f"{problem} (overlong line)", repr(raw[:300]))


async def ask(path: str, data: bytes) -> str:
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(b"\n\n"), REPLY_TIMEOUT)
        return raw.decode("utf-8", "replace")
    finally:
        writer.close()


@pytest.mark.parametrize("seed", SEEDS)
async def test_policy_fuzz(fuzz_policy: Config, seed: int):
    cfg = fuzz_policy
    assert cfg.policy.listen is not None
    path = str(cfg.policy.listen.path)
    findings = fuzzkit.Findings(f"policy fuzz, seed {seed}", FIRST)
    stats = Stats()
    started = time.monotonic()
    indexes = [fuzzkit.only()] if fuzzkit.only() is not None else list(range(SESSIONS))
    for start in range(0, len(indexes), 4):
        if time.monotonic() - started > SECONDS:
            print(f"seed {seed}: time budget of {SECONDS}s reached after {stats.sessions} connections")
            break
        sessions = [Session(seed, i, findings, stats) for i in indexes[start : start + 4]]
        stats.sessions += len(sessions)
        results = await asyncio.gather(*(s.run(path) for s in sessions), return_exceptions=True)
        if any(isinstance(r, OSError) for r in results):
            break
        for r in results:
            if isinstance(r, BaseException):
                raise r
    # alive: a fresh connection still gets the right answers
    try:
        member = await ask(path, SENTINEL)
        stranger = await ask(path, STRANGER)
        if member != "action=DUNNO\n\n" or not stranger.startswith("action=550 5.7.1"):
            findings.add("service alive", "wrong answers after the fuzz", f"{member!r} {stranger!r}", seed, -1, None)
    except Exception as e:
        findings.add("service alive", "no answer after the fuzz", repr(e), seed, -1, None)
    print(f"seed {seed}: {stats} in {time.monotonic() - started:.1f}s")
    print("actions:", *(f"{n:5d}  {a}" for a, n in stats.actions.most_common(25)), sep="\n  ")
    assert not findings, findings.report(str(stats))


@pytest.mark.parametrize("where", ["before sender and recipient", "between them", "after them"])
@pytest.mark.parametrize("count", [100, 101, 150, 1000])
async def test_a_strangers_request_padded_past_100_attributes_is_not_let_through(
    fuzz_policy: Config, where: str, count: int
):
    """Unknown attributes (a newer Postfix adds some) must not turn a refusal into DUNNO."""
    assert fuzz_policy.policy.listen is not None
    attrs = base(b"stranger@example.org", b"youth@myclub.org")
    names = [name for name, _ in attrs]
    at = {
        "before sender and recipient": 1,
        "between them": names.index(b"recipient"),
        "after them": len(attrs),
    }[where]
    attrs[at:at] = padding(count)
    data = serialize(attrs)
    reply = await ask(str(fuzz_policy.policy.listen.path), data)
    problem = check_reply(reply.encode())
    assert problem is None, f"{problem}: {reply!r}"
    action = reply[len("action=") : -2]
    assert not action.startswith(LETS_THROUGH), (
        f"a stranger's post to youth@myclub.org with {count} extra attributes {where} got {action!r}; "
        f"it must be refused or deferred. Request (first and last lines):\n"
        f"{fuzzkit.show(data[:300], 400)}\n...\n{fuzzkit.show(data[-300:], 400)}"
    )
