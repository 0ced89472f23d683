"""The outbound queue (lmtpd.queue): retry schedule, claims under a lease, recorded outcomes.

Pure functions take plain values; the rest runs on a real SQLite file of the test club,
with the time passed in.
"""

from __future__ import annotations

import dataclasses
import os
import random
import socket
import sqlite3
import subprocess
from collections.abc import Iterator

import pytest

from lmtpd import queue
from lmtpd.config import Config, QueueConfig
from lmtpd.store import connect_sync, outbound

from .helpers.reports import parse_report

NOW = 1_800_000_000.0
YOUTH = ["anna@example.net", "bob@example.net", "carla@example.com"]
HEADERS = b"From: Anna <anna@example.net>\r\nSubject: [youth] Training\r\nList-Id: <youth.myclub.org>\r\n"
RAW = b"From: Anna <anna@example.net>\r\nSubject: Training\r\n\r\nSee you at 10.\r\n"


@pytest.fixture
def db(club_config: Config) -> Iterator[sqlite3.Connection]:
    """The club's database, as the writer's connection sees it."""
    conn = connect_sync(club_config.database)
    yield conn
    conn.close()


def queue_post(
    db: sqlite3.Connection,
    recipients: list[str],
    created: float = NOW,
    due: float | None = None,
    queue_id: str = "Q1",
    sender: str = "youth-bounces@myclub.org",
) -> int:
    """A stored post to youth with one pending copy per recipient, due at ``due``; its post id."""
    message_id = db.execute(
        "INSERT INTO messages (queue_id, mail_from, author, message_id, subject, size, raw, arrived_at) "
        "VALUES (?, 'anna@example.net', 'anna@example.net', '', 'Training', ?, ?, ?)",
        (queue_id, len(RAW), RAW, created),
    ).lastrowid
    list_id = db.execute("SELECT id FROM lists WHERE name = 'youth'").fetchone()[0]
    post_id = db.execute(
        "INSERT INTO posts (message_id, list_id, list_name, sender, accepted_at, headers) "
        "VALUES (?, ?, 'youth', ?, ?, ?)",
        (message_id, list_id, sender, created, HEADERS),
    ).lastrowid
    assert post_id is not None
    db.executemany(
        "INSERT INTO deliveries (post_id, recipient, created_at, next_attempt_at) VALUES (?, ?, ?, ?)",
        [(post_id, r, created, created if due is None else due) for r in recipients],
    )
    return post_id


def by_recipient(db: sqlite3.Connection) -> dict[str, sqlite3.Row]:
    return {r["recipient"]: r for r in db.execute("SELECT * FROM deliveries")}


def reports(db: sqlite3.Connection) -> list[sqlite3.Row]:
    return db.execute(
        "SELECT m.raw, d.recipient, m.mail_from FROM posts p JOIN messages m ON m.id = p.message_id "
        "JOIN deliveries d ON d.post_id = p.id WHERE p.kind = 'report'"
    ).fetchall()


# ------------------------------------------------------------- the retry schedule


def test_backoff_follows_age_within_bounds():
    cfg = QueueConfig(minimal_backoff=300, maximal_backoff=3600)
    rng = random.Random(1)
    assert 270 <= queue.backoff(10, cfg, rng) <= 330
    assert 1800 <= queue.backoff(2000, cfg, rng) <= 2200
    assert 3240 <= queue.backoff(86400, cfg, rng) <= 3960


def test_backoff_jitter_spreads_a_burst_by_ten_percent_either_way():
    cfg = QueueConfig(minimal_backoff=300, maximal_backoff=3600)
    rng = random.Random(2)
    waits = [queue.backoff(0, cfg, rng) for _ in range(500)]
    assert min(waits) >= 270 and max(waits) <= 330
    assert max(waits) - min(waits) > 50  # not all at once: the burst is spread
    same = [queue.backoff(0, cfg, random.Random(9)) for _ in range(2)]
    assert same[0] == same[1]  # the jitter comes from the rng given


def test_expiry_turns_a_deferral_into_a_failure():
    cfg = QueueConfig(max_queue_lifetime=7200)
    copy = queue.Delivery(1, "Q", 1, "bob@example.net", "youth-bounces@myclub.org", 3, created_at=0)
    temp = queue.Attempt(copy, sent=False, permanent=False, reply="451 4.2.0 busy")
    state, _, status = queue.next_state(temp, now=1000, cfg=cfg)
    assert state == queue.PENDING and status == ""
    state, _, status = queue.next_state(temp, now=7000, cfg=cfg)
    assert state == queue.FAILED and status == "4.4.7"
    final = queue.Attempt(copy, sent=False, permanent=True, reply="550 5.1.1 no such user")
    assert queue.next_state(final, now=10, cfg=cfg)[::2] == (queue.FAILED, "5.1.1")


def test_next_state_of_a_sent_copy_and_of_a_deferral():
    cfg = QueueConfig()
    copy = queue.Delivery(1, "Q", 1, "bob@example.net", "youth-bounces@myclub.org", 0, created_at=NOW - 1000)
    sent = queue.Attempt(copy, sent=True, permanent=False, reply="250 2.0.0 Ok: queued as 4XyZ1")
    assert queue.next_state(sent, NOW, cfg) == (queue.SENT, NOW, "2.0.0")
    deferred = queue.Attempt(copy, sent=False, permanent=False, reply="421 4.3.2 busy")
    state, retry_at, status = queue.next_state(deferred, NOW, cfg, random.Random(5))
    assert (state, status) == (queue.PENDING, "")
    assert retry_at == NOW + queue.backoff(1000, cfg, random.Random(5))  # the age decides the wait


def test_copy_of_puts_the_lists_headers_on_the_posts_body():
    assert queue.copy_of(RAW, HEADERS) == HEADERS + b"\r\nSee you at 10.\r\n"
    assert queue.copy_of(RAW, None) == RAW  # reports and forwards go out as they are


def test_isotime():
    assert queue.isotime(None) == ""
    assert queue.isotime(0) == "1970-01-01T00:00:00Z"
    assert queue.isotime(NOW) == "2027-01-15T08:00:00Z"


# ------------------------------------------------------------- claims and leases


def test_a_claim_leases_due_copies_to_one_owner_until_the_lease_ends(db: sqlite3.Connection):
    post_id = queue_post(db, YOUTH)
    mine, copies = queue.claim(db, "me:1", NOW, 600, 100)
    assert [d.recipient for d in mine] == YOUTH
    assert {(r["lease_owner"], r["lease_until"]) for r in by_recipient(db).values()} == {("me:1", NOW + 600)}
    bob = next(d for d in mine if d.recipient == "bob@example.net")
    assert (bob.queue_id, bob.post_id, bob.attempts, bob.created_at, bob.domain) == (
        "Q1",
        post_id,
        0,
        NOW,
        "example.net",
    )
    assert bob.sender == "youth-bounces+bob=example.net@myclub.org"  # VERP
    assert copies == {post_id: HEADERS + b"\r\nSee you at 10.\r\n"}
    assert queue.claim(db, "them:2", NOW + 599, 600, 100) == ([], {})  # still leased
    theirs, _ = queue.claim(db, "them:2", NOW + 601, 600, 100)  # the lease ran out: claimable again
    assert [d.recipient for d in theirs] == YOUTH


def test_a_claim_takes_the_earliest_due_copies_up_to_its_limit(db: sqlite3.Connection):
    queue_post(db, ["late@example.net"], due=NOW - 10, queue_id="Q1")
    queue_post(db, ["early@example.net"], due=NOW - 20, queue_id="Q2")
    queue_post(db, ["future@example.net"], due=NOW + 100, queue_id="Q3")
    first, _ = queue.claim(db, "me:1", NOW, 600, 1)
    second, _ = queue.claim(db, "me:1", NOW, 600, 5)
    assert [d.recipient for d in first] == ["early@example.net"]
    assert [d.recipient for d in second] == ["late@example.net"]  # not the one due later
    assert outbound.next_due(db) == NOW + 100


def test_a_claim_of_one_message_and_without_verp(db: sqlite3.Connection):
    queue_post(db, ["anna@example.net"], queue_id="Q1")
    queue_post(db, ["bob@example.net", "carla@example.com"], queue_id="Q2", sender="")
    claimed, _ = queue.claim(db, "me:1", NOW, 600, 100, queue_id="Q2", verp="")
    assert [(d.queue_id, d.recipient, d.sender) for d in claimed] == [
        ("Q2", "bob@example.net", ""),
        ("Q2", "carla@example.com", ""),
    ]


def test_a_claim_skips_the_domains_it_is_told_to(db: sqlite3.Connection):
    queue_post(db, ["anna@example.net", "Carla@Example.COM", "bob@example.net"])
    claimed, _ = queue.claim(db, "me:1", NOW, 600, 100, skip_domains=("example.com",))
    assert sorted(d.recipient for d in claimed) == ["anna@example.net", "bob@example.net"]


def test_copies_not_pending_are_never_claimed(db: sqlite3.Connection):
    queue_post(db, YOUTH)
    db.execute("UPDATE deliveries SET state = 'held' WHERE recipient = 'anna@example.net'")
    db.execute("UPDATE deliveries SET state = 'sent' WHERE recipient = 'bob@example.net'")
    claimed, _ = queue.claim(db, "me:1", NOW, 600, 100)
    assert [d.recipient for d in claimed] == ["carla@example.com"]


def test_only_the_owners_pending_copies_are_renewed(db: sqlite3.Connection):
    queue_post(db, YOUTH)
    mine, _ = queue.claim(db, "me:1", NOW, 600, 2)
    theirs, _ = queue.claim(db, "them:2", NOW, 600, 5)
    db.execute("UPDATE deliveries SET state = 'sent' WHERE id = ?", (mine[1].id,))
    kept = outbound.renew_leases(db, "me:1", [d.id for d in mine + theirs], NOW + 900)
    assert kept == {mine[0].id}
    leases = {r["id"]: r["lease_until"] for r in db.execute("SELECT id, lease_until FROM deliveries")}
    assert leases[mine[0].id] == NOW + 900 and leases[theirs[0].id] == NOW + 600


def test_leases_of_dead_processes_are_released_and_no_others(db: sqlite3.Connection):
    child = subprocess.Popen(["true"])
    child.wait()  # its pid names a process that no longer exists
    here = socket.gethostname()
    owners = {
        "anna@example.net": f"{here}:{child.pid}",
        "bob@example.net": f"{here}:{os.getpid()}",  # alive: this very process
        "carla@example.com": "another-host.example:1",  # cannot tell: left to expire
    }
    queue_post(db, list(owners))
    for recipient, owner in owners.items():
        db.execute(
            "UPDATE deliveries SET lease_owner = ?, lease_until = ? WHERE recipient = ?", (owner, NOW + 600, recipient)
        )
    assert queue.release_dead_leases(db) == 1
    assert {r: row["lease_owner"] for r, row in by_recipient(db).items()} == {**owners, "anna@example.net": None}
    outbound.release_leases(db, f"{here}:{os.getpid()}")
    assert by_recipient(db)["bob@example.net"]["lease_owner"] is None
    assert by_recipient(db)["carla@example.com"]["lease_owner"] == "another-host.example:1"


# ------------------------------------------------------------- recorded outcomes


def test_recorded_outcomes_and_a_report_at_the_end_of_each_pass_that_made_failures_final(
    db: sqlite3.Connection, club_config: Config
):
    post_id = queue_post(db, YOUTH)
    claimed, _ = queue.claim(db, "me:1", NOW, 600, 100)
    copy = {d.recipient: d for d in claimed}
    attempts = [
        queue.Attempt(copy["anna@example.net"], True, False, "250 2.0.0 Ok", "mx.example.net", "verified"),
        queue.Attempt(copy["bob@example.net"], False, False, "451 4.2.0 mailbox busy", "mx.example.net", "none"),
        queue.Attempt(copy["carla@example.com"], False, True, "550 5.1.1 no such user", "mx.example.com"),
    ]
    assert queue.record(db, attempts, NOW + 5, club_config, random.Random(1)) == ["sent", "pending", "failed"]
    rows = {r: row for r, row in by_recipient(db).items() if r != "admin@myclub.org"}  # not the report
    assert [(r["state"], r["status"], r["attempts"], r["last_attempt_at"]) for r in rows.values()] == [
        ("sent", "2.0.0", 1, NOW + 5),
        ("pending", "", 1, NOW + 5),
        ("failed", "5.1.1", 1, NOW + 5),
    ]
    assert all(r["lease_owner"] is None and r["lease_until"] is None for r in rows.values())
    assert (rows["anna@example.net"]["remote_mta"], rows["anna@example.net"]["tls"]) == ("mx.example.net", "verified")
    assert rows["bob@example.net"]["last_reply"] == "451 4.2.0 mailbox busy"
    assert NOW + 5 + 270 <= rows["bob@example.net"]["next_attempt_at"] <= NOW + 5 + 330
    # carla's failure is reported at once, though bob's copy is not final yet (as Postfix does)
    (first,) = reports(db)
    assert (first["recipient"], first["mail_from"]) == ("admin@myclub.org", "")
    _, blocks = parse_report(bytes(first["raw"]))
    assert [b["Final-Recipient"] for b in blocks[1:]] == ["rfc822; carla@example.com"]
    assert db.execute("SELECT reported_at FROM posts WHERE id = ?", (post_id,)).fetchone()[0] is None
    assert queue.report_if_due(db, post_id, NOW + 10, club_config) is None  # carla is not reported twice

    retry = next(d for d in queue.claim(db, "me:1", NOW + 400, 600, 100)[0] if d.recipient == "bob@example.net")
    gone = queue.Attempt(retry, False, True, "550 5.1.1 gone", "mx.example.net")
    assert queue.record(db, [gone], NOW + 400, club_config) == ["failed"]
    second = reports(db)[1]
    _, blocks = parse_report(bytes(second["raw"]))
    assert [b["Final-Recipient"] for b in blocks[1:]] == ["rfc822; bob@example.net"]  # only the new failure
    assert db.execute("SELECT reported_at FROM posts WHERE id = ?", (post_id,)).fetchone()[0] == NOW + 400
    assert queue.report_if_due(db, post_id, NOW + 500, club_config) is None  # once


def test_a_delay_warning_once_copies_have_waited_long_enough(db: sqlite3.Connection, club_config: Config):
    cfg = dataclasses.replace(club_config, queue=dataclasses.replace(club_config.queue, delay_warning=3600))
    post_id = queue_post(db, ["bob@example.net"])
    (copy,) = queue.claim(db, "me:1", NOW, 600, 1)[0]
    queue.record(db, [queue.Attempt(copy, False, False, "451 4.2.0 busy")], NOW + 60, cfg)
    assert reports(db) == []  # waited a minute: no warning yet
    assert queue.report_if_due(db, post_id, NOW + 3700, cfg) is not None
    (warning,) = reports(db)
    _, blocks = parse_report(bytes(warning["raw"]))
    assert [(b["Final-Recipient"], b["Action"]) for b in blocks[1:]] == [("rfc822; bob@example.net", "delayed")]
    assert queue.report_if_due(db, post_id, NOW + 7200, cfg) is None  # warned once


def test_a_flush_makes_unleased_pending_copies_due_now(db: sqlite3.Connection):
    queue_post(db, ["anna@example.net", "bob@example.net"], due=NOW + 3000, queue_id="Q1")
    queue_post(db, ["carla@example.com"], due=NOW + 3000, queue_id="Q2")
    db.execute(
        "UPDATE deliveries SET lease_owner = 'me:1', lease_until = ? WHERE recipient = 'bob@example.net'", (NOW,)
    )
    assert outbound.make_all_due(db, NOW, queue_id="Q2") == 1
    assert outbound.make_all_due(db, NOW) == 1  # anna; bob is leased
    due = {r: row["next_attempt_at"] for r, row in by_recipient(db).items()}
    assert due == {"anna@example.net": NOW, "bob@example.net": NOW + 3000, "carla@example.com": NOW}


def test_next_due_counts_leases_and_nothing_when_the_queue_is_empty(db: sqlite3.Connection):
    assert outbound.next_due(db) is None
    queue_post(db, ["anna@example.net"], due=NOW)
    queue.claim(db, "me:1", NOW, 600, 1)
    assert outbound.next_due(db) == NOW + 600  # due, but not before its lease ends


def test_failures_a_dead_process_recorded_but_did_not_report_are_reported_on_restart(
    db: sqlite3.Connection, club_config: Config
):
    post_id = queue_post(db, ["bob@example.net", "carla@example.com"])
    claimed, _ = queue.claim(db, "me:1", NOW, 600, 100)
    failed = [queue.Attempt(d, False, True, "550 5.1.1 gone", "mx.example.net") for d in claimed]
    queue.record(db, failed, NOW + 5, club_config, report=False)  # the worker's way; then it died
    assert reports(db) == []
    assert len(queue.report_left_over(db, NOW + 60, club_config)) == 1
    _, blocks = parse_report(bytes(reports(db)[0]["raw"]))
    assert sorted(b["Final-Recipient"] for b in blocks[1:]) == ["rfc822; bob@example.net", "rfc822; carla@example.com"]
    assert db.execute("SELECT reported_at FROM posts WHERE id = ?", (post_id,)).fetchone()[0] == NOW + 60
    assert queue.report_left_over(db, NOW + 120, club_config) == []  # the report itself is never reported
