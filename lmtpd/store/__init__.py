"""The store: every SQL statement lmtpd runs, and the only place that knows SQLite.

Where SQL lives
---------------

All SQL is in this package; the stages (ingest, policy, queue, bounces, roster,
the operator verbs) call its functions and get back small frozen dataclasses
(:class:`~lmtpd.store.records.Record`, also readable as mappings), plain dicts for
``--json`` listings, or, on the delivery worker's hot path (claim, record), tuples.
:mod:`~lmtpd.store.engine` opens connections (the PRAGMAs are set there and nowhere
else), runs the migrations in ``migrations/`` and holds the transaction helpers;
:mod:`~lmtpd.store.writer` is the group-commit :class:`Writer` with its
:class:`BatchWork`. One repository module per group of tables: ``members`` (members,
lists, memberships, quota_use), ``posts`` (messages, posts), ``outbound`` (deliveries:
fan-out, claim, leases, outcomes, mail to the administrator), ``outbound_admin`` (the
queue verbs) and ``bounces``.

Two drivers, each with one way to write. sqlite3, synchronous, for the hot paths:
every write goes through :class:`Writer` (jobs in savepoints, one COMMIT and one
fsync per batch), reads on the event loop use :func:`connect_sync` (indexed reads of
microseconds in WAL mode). aiosqlite for the operator's commands: writes inside
:func:`transaction` (BEGIN IMMEDIATE ... COMMIT). SQLite-only syntax (PRAGMAs, TEMP
tables, ``rtrim``/``group_concat`` tricks) stays here, so a PostgreSQL engine could
sit behind the same functions.

Glossary
--------

message
    The raw bytes of one LMTP transaction, as received: a ``messages`` row. Its row
    id is ``msg_id`` in code (the column ``posts.message_id`` holds it);
    ``message_id`` always means the Message-ID header.
post
    One message accepted for one list: a ``posts`` row of kind ``list``. lmtpd's
    own mail is stored as posts too, of kind ``report``, ``forward`` or ``reply``
    (:class:`PostKind`).
copy
    One per member per post, what the worker sends: a ``deliveries`` row
    (``copy_id``), with its state (pending, held, sent, failed) and lease.
report
    lmtpd's own mail to the administrator: DSNs (failures, delays) and bounce
    summaries. Never about a report or a forward.
forward
    Mail to a list's -request or -owner address, passed to the administrator as it
    came (with X-Lmtpd-Forwarded-For): kind ``forward``, never reported on either.
reply
    lmtpd's answer to a member's command mail (kind ``reply``): null envelope
    sender, ``Auto-Submitted: auto-replied``, one copy to the member.
queue id
    The short id of one message, shared by its posts and copies, as in the logs.
bounce class
    What a processed bounce says (permanent, temporary, policy...):
    :class:`BounceClass`, column ``bounces.kind``.
address kind
    What a recipient address of the club domain is: a list's post, bounce,
    request or owner address (``lists.Recipient.kind``).
"""

from ..addresses import normalize_address
from .bounces import BounceClass
from .engine import (
    BUSY_TIMEOUT_MS,
    PRAGMAS,
    SchemaError,
    StoreError,
    check_path,
    connect,
    connect_sync,
    migrations,
    open_database,
    savepoint,
    transaction,
    upgrade,
)
from .posts import PostKind
from .writer import BatchWork, Writer

__all__ = [
    "BUSY_TIMEOUT_MS",
    "PRAGMAS",
    "BatchWork",
    "BounceClass",
    "PostKind",
    "SchemaError",
    "StoreError",
    "Writer",
    "check_path",
    "connect",
    "connect_sync",
    "migrations",
    "normalize_address",
    "open_database",
    "savepoint",
    "transaction",
    "upgrade",
]
