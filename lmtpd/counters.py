"""Prometheus counters and histograms of what happens in this process, as it happens.

:mod:`lmtpd.metrics` reads the queue's gauges from the database at scrape time;
events (replies, decisions, relay attempts, commits) leave no row to count, so they
are counted here, in memory. These are the one piece of module-level state in
lmtpd: the Prometheus client's idiom, and no caller should have to carry them.
Every label is a code class, a stage, an action or a destination class: never an
address or a domain.

The delivery worker runs in a process of its own. It writes its figures to a
textfile in a private directory that ``serve`` creates (:func:`write_worker_file`),
and serve adds them to its own at each scrape (:func:`merged`). A textfile rather
than prometheus_client's multiprocess mode: that mode is chosen once, by an
environment variable read when prometheus_client is first imported, it changes how
every metric of the process is stored (mmap files per process that pile up across
worker restarts) and it cannot carry the custom collector of queue gauges.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, write_to_textfile
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

REGISTRY = CollectorRegistry(auto_describe=True)

# Seconds: a relay attempt takes from milliseconds (smarthost) to minutes (a tarpit).
RELAY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Seconds: a group commit is an fsync, from a tenth of a millisecond to a slow disk's second.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

LMTP_REPLIES = Counter(
    "lmtpd_lmtp_replies",
    "LMTP replies by stage (mail, rcpt, data: one per recipient) and code class",
    ["stage", "code_class"],
    registry=REGISTRY,
)
POLICY_DECISIONS = Counter(
    "lmtpd_policy_decisions", "Postfix policy answers by action (dunno, defer, reject)", ["action"], registry=REGISTRY
)
RELAY_ATTEMPTS = Counter(
    "lmtpd_relay_attempts",
    "Copies tried by outcome (sent, deferred, bounced) and destination class (smarthost, mx)",
    ["outcome", "destination"],
    registry=REGISTRY,
)
RELAY_SECONDS = Histogram(
    "lmtpd_relay_duration_seconds",
    "Time to relay one copy (its SMTP transaction) by destination class",
    ["destination"],
    buckets=RELAY_BUCKETS,
    registry=REGISTRY,
)
COMMIT_SECONDS = Histogram(
    "lmtpd_db_commit_duration_seconds",
    "Group commits of the Writer: batch work, COMMIT and its fsync",
    buckets=COMMIT_BUCKETS,
    registry=REGISTRY,
)
REMINDERS_POSTED = Counter("lmtpd_reminders_posted", "Reminder occurrences posted to their list", registry=REGISTRY)
COMMANDS_ANSWERED = Counter(
    "lmtpd_commands_answered", "Mail commands answered (one per request address and message)", registry=REGISTRY
)


def code_class(reply: str) -> str:
    """'2xx', '4xx' or '5xx' for an SMTP reply; 'other' for anything else."""
    head = reply[:1]
    return f"{head}xx" if head in ("2", "3", "4", "5") else "other"


def policy_action(action: str) -> str:
    """A policy answer's kind: 'reject' for a 5xx, 'defer' for a 4xx, else its first word."""
    head = action[:1]
    if head == "5":
        return "reject"
    if head == "4":
        return "defer"
    word = action.split(" ", 1)[0].lower()
    return word if word.isalpha() else "other"


def count_replies(stage: str, replies: Iterable[str]) -> None:
    for reply in replies:
        LMTP_REPLIES.labels(stage, code_class(reply)).inc()


def write_worker_file(path: Path) -> None:
    """The worker's figures, written atomically (a temporary file renamed) for serve to read."""
    write_to_textfile(str(path), REGISTRY)
    os.chmod(path, 0o600)


def read_families(path: Path) -> list[Metric]:
    """The families in a textfile; none if it is missing or torn."""
    try:
        text = path.read_text()
    except OSError:
        return []
    try:
        return list(text_string_to_metric_families(text))
    except ValueError:
        return []


def merged(*groups: Iterable[Metric]) -> Iterator[Metric]:
    """One family per name, samples with the same name and labels added up.

    Counters and histogram buckets of two processes add; a family only one
    process has passes through.
    """
    families: dict[str, Metric] = {}
    sums: dict[str, dict[tuple, float]] = {}
    samples: dict[str, dict[tuple, object]] = {}
    for group in groups:
        for family in group:
            if family.name.endswith("_created"):  # the text format's separate family of start times
                continue
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                sums[family.name], samples[family.name] = {}, {}
            for s in family.samples:
                if s.name.endswith("_created"):  # a process's start time: no sum of two means anything
                    continue
                key = (s.name, tuple(sorted(s.labels.items())))
                sums[family.name][key] = sums[family.name].get(key, 0.0) + s.value
                samples[family.name].setdefault(key, s)
    for name, family in families.items():
        for key, value in sums[name].items():
            s = samples[name][key]
            family.add_sample(s.name, dict(s.labels), value)  # type: ignore[attr-defined]
        yield family
