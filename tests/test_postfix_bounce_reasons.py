"""End to end: Postfix's own bounces, back over LMTP, read with a reason; only a dead address scores.

lmtpd relays a post through a private Postfix; the members' server (an aiosmtpd sink)
refuses carla as a blocklisted client and bob as unknown. Postfix bounces both to the
VERP addresses, the bounces come back to lmtpd over LMTP, and ``bounces process``
records carla's as ``blocked`` (never scored) and bob's as ``userunknown`` (scored).
The same two refusals given synchronously in direct MX mode are in test_refusals.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from lmtpd import bounces
from lmtpd.runtime import open_runtime

from .helpers import postfix
from .helpers.club import new_club
from .helpers.processes import serving
from .helpers.sink import Sink, start_sink
from .helpers.timing import eventually

pytestmark = postfix.marks()

SINK_PORT = postfix.free_port()
BLOCKED = "550 5.7.1 Service unavailable; client [127.0.0.1] listed at zen.spamhaus.org; see https://www.spamhaus.org/query/ip/127.0.0.1"
UNKNOWN = "550 5.1.1 <bob@example.net>: Recipient address rejected: user unknown"


@pytest.fixture(scope="module")
def front_postfix():
    instance = postfix.front("reasons", SINK_PORT)
    yield instance
    instance.stop()


@pytest.fixture
async def members_side() -> Sink:
    s = await start_sink(SINK_PORT)
    yield s
    s.server.close()


async def post(mta: postfix.Postfix, subject: str) -> None:
    """anna posts to youth through Postfix, from a client outside mynetworks."""
    body = (
        f"From: anna@example.net\nTo: youth@myclub.org\nSubject: {subject}\nMessage-ID: <{subject}@example.net>\n\nhi\n"
    )
    proc = await asyncio.create_subprocess_exec(
        "swaks", "--server", f"127.0.0.1:{mta.port}", "--local-interface", "127.0.0.9",
        "--helo", "client.example.net", "--from", "anna@example.net", "--to", "youth@myclub.org", "--data", body,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode(errors="replace")


async def test_a_blocklisting_is_recorded_as_blocked_and_a_dead_address_scored(
    front_postfix, short_dir, members_side: Sink
):
    policy = f'[policy]\nlisten = "unix:{front_postfix.queue}/private/lmtpd-policy"\nsocket_mode = "0666"\n'
    cfg = await new_club(short_dir, f"unix:{front_postfix.lmtp_socket}", front_postfix.port, extra=policy)
    members_side.rcpt_replies = {"bob@example.net": UNKNOWN, "carla@example.com": BLOCKED}
    db = sqlite3.connect(cfg.database)
    db.row_factory = sqlite3.Row
    try:
        async with serving(cfg.source):
            await post(front_postfix, "reasons")
            await eventually(lambda: db.execute("SELECT count(*) FROM bounces").fetchone()[0] >= 2, 60, "two bounces")
            async with open_runtime(cfg, ingest=False) as runtime:
                await bounces.process(runtime.writer.submit, cfg, time.time())
        got = {r["extension"]: r for r in db.execute("SELECT * FROM bounces")}
        assert set(got) == {"bob=example.net", "carla=example.com"}
        assert all(r["mail_from"] == "" for r in got.values())  # Postfix's own bounces, to the VERP address
        assert b"MAILER-DAEMON" in bytes(got["carla=example.com"]["raw"])
        assert (got["carla=example.com"]["reason"], got["carla=example.com"]["counted"]) == ("blocked", 0)
        assert (got["bob=example.net"]["reason"], got["bob=example.net"]["counted"]) == ("userunknown", 1)
        scores = dict(db.execute("SELECT address, bounce_score FROM members").fetchall())
        assert scores["bob@example.net"] == 1 and scores["carla@example.com"] == 0
        assert members_side.to("anna@example.net") != []  # the post itself went out
    finally:
        db.close()
