"""The club's roster: members, lists and memberships, and the CSV import.

Parsing a CSV is a pure function that either yields every row or the list of
bad lines; applying it is one transaction, so a file is imported whole or not.

Over 400 lines because list and member edits share their checks (names, addresses, the
club domain); reading spreadsheets is in :mod:`lmtpd.spreadsheet`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import aiosqlite

from . import dates, headers, spreadsheet
from .addresses import normalize_address
from .queue import isotime
from .spreadsheet import SheetRow
from .store import held as db_held
from .store import members as db_members

_LIST_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_RESERVED_SUFFIXES = ("-bounces", "-request", "-owner", "-moderate")
_ADDRESS = re.compile(r"^[^@\s<>(),;:\"\[\]\\]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


class RosterError(Exception):
    """A request the roster cannot honour, worded for the operator."""


def check_language(value: str) -> str:
    try:
        return dates.check_language(value)
    except dates.LanguageError as exc:
        raise RosterError(str(exc)) from None


def check_list_name(name: str) -> str:
    name = name.strip().lower()
    if not _LIST_NAME.match(name):
        raise RosterError(f"not a valid list name: {name!r} (letters, digits, '.', '_', '-')")
    if name.endswith(_RESERVED_SUFFIXES):
        raise RosterError(f"list names may not end in {', '.join(_RESERVED_SUFFIXES)}: {name!r}")
    return name


def check_address(address: str) -> str:
    address = address.strip()
    if not _ADDRESS.match(address) or len(address) > 254 or not address.isprintable():
        raise RosterError(f"not a valid email address: {address!r}")
    return normalize_address(address)


# -------------------------------------------------------------------- lists


@dataclass(frozen=True)
class ListSettings:
    """How a list behaves; the defaults are what ``lists add NAME`` gives."""

    description: str = ""
    posters: str = "club"  # any active club member, or "list": only the list's members
    posts_per_day: int | None = None  # None: [limits] posts_per_day
    auth_require: str | None = None  # None: [auth] require
    subject_prefix: str | None = None  # None: "[name]"
    reply_to: str = "poster"
    dmarc_mitigation: str = "auto"
    archive_url: str = ""
    posting: str = "members"  # or "moderated", "announce" (see lmtpd.moderation)
    unauthenticated: str = "refuse"  # or "confirm", "hold"
    moderators: str = ""  # addresses, space-separated; "": the administrator
    self_join: bool = False  # members may join by mail (``join NAME``, lmtpd.commands)
    roster: str = "admin"  # who may see the members by mail: "members", "admin" (not by mail), "nobody"
    notify: str | None = None  # moderators' notifications: "each", "digest"; None: [moderation] notify
    max_size: int | None = None  # bytes a post may have; None: [lmtp] max_message_size alone
    language: str | None = None  # dates in reminders (lmtpd.dates); None: English, ISO dates


async def add_list(db: aiosqlite.Connection, name: str, now: float, settings: ListSettings = ListSettings()) -> None:
    name = check_list_name(name)
    check_name("the description", settings.description)
    check_name("the subject prefix", settings.subject_prefix or "")
    check_name("the archive URL", settings.archive_url)
    if any(c in settings.archive_url for c in "<> \"'"):
        raise RosterError(f"not a usable archive URL: {settings.archive_url!r}")
    reply_to = settings.reply_to
    if reply_to not in ("poster", "list"):
        reply_to = check_address(reply_to)
    if await db_members.get_list(db, name) is not None:
        raise RosterError(f"list {name} exists already")
    moderators = check_moderators(settings.moderators)
    language = check_language(settings.language) if settings.language else None
    await db_members.insert_list(
        db, name, now, asdict(settings) | {"reply_to": reply_to, "moderators": moderators, "language": language}
    )


def check_moderators(value: str) -> str:
    """Moderators as stored: checked addresses, space-separated (commas allowed on input)."""
    return " ".join(check_address(a) for a in re.split(r"[\s,;]+", value) if a)


async def set_list(db: aiosqlite.Connection, name: str, changes: dict) -> dict:
    """Change the settings given in ``changes`` (ListSettings' fields) in place; memberships stay.

    Returns the list as ``lists show`` prints it. Each value is checked as ``lists add`` checks it.
    """
    lst = await db_members.get_list(db, name)
    if lst is None:
        raise RosterError(f"no such list: {name}")
    unknown = set(changes) - set(ListSettings.__dataclass_fields__)
    if unknown:
        raise RosterError(f"unknown list setting(s): {', '.join(sorted(unknown))}")
    values = dict(changes)
    for key, what in (("description", "the description"), ("subject_prefix", "the subject prefix")):
        if values.get(key) is not None:
            check_name(what, values[key])
    if "archive_url" in values:
        check_name("the archive URL", values["archive_url"])
        if any(c in values["archive_url"] for c in "<> \"'"):
            raise RosterError(f"not a usable archive URL: {values['archive_url']!r}")
    if values.get("reply_to") not in (None, "poster", "list"):
        values["reply_to"] = check_address(values["reply_to"])
    if "moderators" in values:
        values["moderators"] = check_moderators(values["moderators"] or "")
    if "language" in values:
        values["language"] = check_language(values["language"]) if values["language"] else None
    await db_members.update_list(db, lst.id, values)
    return await show_list(db, lst.name)


async def show_list(db: aiosqlite.Connection, name: str) -> dict:
    """Every setting of one list and its number of members."""
    for row in await db_members.list_overview(db):
        if row["name"] == name.strip().lower():
            return row
    raise RosterError(f"no such list: {name}")


async def remove_list(db: aiosqlite.Connection, name: str) -> None:
    if not await db_members.delete_list(db, name.strip().lower()):
        raise RosterError(f"no such list: {name}")


async def remove_list_checked(db: aiosqlite.Connection, name: str, yes: bool) -> int:
    """Remove a list; one with members or undecided held posts only with ``yes``. Returns the
    memberships dropped."""
    lst = await db_members.get_list(db, name.strip().lower())
    if lst is None:
        raise RosterError(f"no such list: {name}")
    count = await db_members.membership_count(db, lst.id)
    waiting = await db_held.undecided_count(db, lst.id)  # accepted with a 250: never dropped unasked
    if (count or waiting) and not yes:
        held = f" and {waiting} held post(s) nobody decided yet" if waiting else ""
        raise RosterError(f"list {lst.name} has {count} membership(s){held} that removing it would drop: add --yes")
    await remove_list(db, lst.name)
    return count


async def rename_list(db: aiosqlite.Connection, old: str, new: str) -> str:
    """Rename a list: members, history and settings stay; the old address stops working."""
    lst = await db_members.get_list(db, old)
    if lst is None:
        raise RosterError(f"no such list: {old}")
    new = check_list_name(new)
    if await db_members.get_list(db, new) is not None:
        raise RosterError(f"list {new} exists already")
    await db_members.rename_list(db, lst.id, lst.name, new)
    return new


async def known_lists(db: aiosqlite.Connection) -> set[str]:
    return await db_members.list_names(db)


async def all_lists(db: aiosqlite.Connection) -> list[dict]:
    return await db_members.list_overview(db)


# ------------------------------------------------------------------ members


async def _list_ids(db: aiosqlite.Connection, names: list[str]) -> dict[str, int]:
    ids = {}
    for name in names:
        lst = await db_members.get_list(db, name)
        if lst is None:
            raise RosterError(f"no such list: {name}")
        ids[lst.name] = lst.id
    return ids


def check_not_ours(address: str, club_domain: str) -> None:
    """Every address of the club domain is lmtpd's own: a list, its bounce (VERP),
    request or owner address. Postfix hands all of them to lmtpd, so a member there
    would never receive a copy, and a list address as a member would mail itself."""
    if address.rpartition("@")[2].lower() == club_domain:
        raise RosterError(
            f"{address} is in the club domain {club_domain}, whose addresses are lmtpd's own "
            "(lists, bounce, request and owner addresses): it cannot be a member"
        )


def check_name(what: str, value: str) -> str:
    """An administrator's text that ends up in headers or listings: one line, no controls."""
    try:
        return headers.check_text(what, value)
    except headers.HeaderValueError as exc:
        raise RosterError(str(exc)) from None


async def add_member(
    db: aiosqlite.Connection, address: str, name: str, lists: list[str], now: float, club_domain: str
) -> tuple[bool, list[str]]:
    """Add (or update) a member and subscribe to ``lists``; return (created, lists added)."""
    address = check_address(address)
    check_not_ours(address, club_domain)
    check_name("a member's name", name)
    ids = await _list_ids(db, lists)
    member = await db_members.get_member(db, address)
    created = member is None
    if member is None:
        member_id = await db_members.insert_member(db, address, name, now)
    else:
        member_id = member.id
        if name and name != member.name:
            await db_members.rename_member(db, member_id, name)
    added = [n for n, list_id in ids.items() if await db_members.subscribe(db, list_id, member_id)]
    return created, added


async def remove_member(db: aiosqlite.Connection, address: str, lists: list[str]) -> None:
    """Remove from ``lists``, or from the club altogether when no list is named."""
    member = await db_members.get_member(db, normalize_address(address))
    if member is None:
        raise RosterError(f"no such member: {address}")
    if not lists:
        await db_members.delete_member(db, member.id)
        return
    for list_name, list_id in (await _list_ids(db, lists)).items():
        if not await db_members.unsubscribe(db, list_id, member.id):
            raise RosterError(f"{address} is not a member of {list_name}")


async def set_member(
    db: aiosqlite.Connection,
    address: str,
    now: float,
    name: str | None = None,
    add: tuple[str, ...] = (),
    remove: tuple[str, ...] = (),
    may_post: bool | None = None,
    pause: bool | None = None,
) -> list[str]:
    """Change a member in place; returns what changed, one phrase each."""
    member = await db_members.get_member(db, check_address(address))
    if member is None:
        raise RosterError(f"no such member: {address}")
    changes: list[str] = []
    settings: dict = {}
    if name is not None and name != member.name:
        settings["name"] = check_name("a member's name", name)
        changes.append(f"name {name!r}")
    if may_post is not None and may_post != bool(member.may_post):
        settings["may_post"] = int(may_post)
        changes.append("may post" if may_post else "may not post")
    await db_members.update_member(db, member.id, settings)
    for list_name, list_id in (await _list_ids(db, list(add))).items():
        if await db_members.subscribe(db, list_id, member.id):
            changes.append(f"subscribed to {list_name}")
    for list_name, list_id in (await _list_ids(db, list(remove))).items():
        if await db_members.unsubscribe(db, list_id, member.id):
            changes.append(f"unsubscribed from {list_name}")
    paused = is_paused(member.paused_at, member.paused_until, now)
    if pause and not paused:
        await db_members.pause_member(db, member.id, now, "admin")
        changes.append("delivery paused")
    elif pause is False and paused:
        await db_members.pause_member(db, member.id, None)
        changes.append("delivery resumed")
    return changes


def is_paused(paused_at: float | None, paused_until: float | None, now: float) -> bool:
    """One pause, whoever set it (the member by mail, the administrator): no copies until it ends."""
    return paused_at is not None and (paused_until is None or paused_until > now)


def pause_view(row: Mapping, now: float) -> dict | None:
    """A member's pause as ``members list`` shows it, or None if they get mail."""
    if not is_paused(row["paused_at"], row["paused_until"], now):
        return None
    by = {"admin": "administrator", "member": "member"}.get(row["paused_by"], "member")
    return {"since": isotime(row["paused_at"]), "until": isotime(row["paused_until"]) or None, "by": by}


async def rename_address(db: aiosqlite.Connection, old: str, new: str, club_domain: str) -> str:
    """A member's new address; lists, bounce history and posts stay theirs."""
    member = await db_members.get_member(db, check_address(old))
    if member is None:
        raise RosterError(f"no such member: {old}")
    new = check_address(new)
    check_not_ours(new, club_domain)
    other = await db_members.get_member(db, new)
    if other is not None and other.id != member.id:
        raise RosterError(f"{new} is a member already")
    await db_members.update_member(db, member.id, {"address": new})
    return new


async def enable_member(db: aiosqlite.Connection, address: str) -> None:
    """Send to the member again, with a clean bounce score."""
    if not await db_members.enable_member(db, normalize_address(address)):
        raise RosterError(f"no such member: {address}")


async def members(db: aiosqlite.Connection, list_name: str | None = None, now: float | None = None) -> list[dict]:
    """Members as ``members list`` shows them: lists, posting rights, pause, bounces."""
    now = time.time() if now is None else now
    list_id = None
    if list_name:
        lst = await db_members.get_list(db, list_name)
        if lst is None:
            raise RosterError(f"no such list: {list_name}")
        list_id = lst.id
    return [
        {
            "address": r["address"],
            "name": r["name"],
            "active": bool(r["active"]),
            "lists": r["lists"].split(),
            "bounce_score": r["bounce_score"],
            "delivery_disabled": isotime(r["delivery_disabled_at"]) or None,
            "disabled_reason": r["disabled_reason"],
            "posting": "allowed" if r["may_post"] else "denied",
            "paused": pause_view(r, now),
        }
        for r in await db_members.member_overview(db, list_id)
    ]


# --------------------------------------------------------------- CSV import


RosterRow = SheetRow  # one member as a file gives it


@dataclass
class ImportReport:
    added: list[str] = field(default_factory=list)
    renamed: list[str] = field(default_factory=list)
    subscribed: list[tuple[str, str]] = field(default_factory=list)
    unchanged: int = 0
    unsubscribed: list[tuple[str, str]] = field(default_factory=list)  # --sync: members the file no longer names


def parse_roster(data: str | bytes, known_lists: set[str] | None = None) -> tuple[list[RosterRow], list[str]]:
    """Rows of a member file (see :mod:`lmtpd.spreadsheet`: CSV as spreadsheets export it,
    or ``members export`` JSON) and every error, each naming its line; any error means
    nothing should be imported. ``known_lists``: unknown list names are errors too.
    """
    return spreadsheet.parse(data, _checked_row, known_lists)


def _checked_row(address: str, name: str, lists: list[str]) -> tuple[str, str, tuple[str, ...]]:
    """A row as stored; a name with line breaks or other controls is an error, never silently changed."""
    try:
        stored = check_address(address)
        name = check_name("the name", name)
        return stored, name, tuple(dict.fromkeys(check_list_name(n) for n in lists if n))
    except RosterError as exc:
        raise ValueError(str(exc)) from None


async def import_roster(db: aiosqlite.Connection, rows: list[RosterRow], now: float, club_domain: str) -> ImportReport:
    """Apply parsed rows (inside the caller's transaction); additive and idempotent."""
    missing = sorted({n for r in rows for n in r.lists} - await db_members.list_names(db))
    if missing:
        lines = {n: next(r.line for r in rows if n in r.lists) for n in missing}
        raise RosterError("; ".join(f"line {lines[n]}: no such list: {n}" for n in missing))
    report = ImportReport()
    for row in rows:
        before = await db_members.get_member(db, row.address)
        try:
            created, subscribed = await add_member(db, row.address, row.name, list(row.lists), now, club_domain)
        except RosterError as exc:
            raise RosterError(f"line {row.line}: {exc}") from None
        if created:
            report.added.append(row.address)
        elif before is not None and row.name and row.name != before.name:
            report.renamed.append(row.address)
        report.subscribed.extend((row.address, n) for n in subscribed)
        if not created and not subscribed and (before is None or not row.name or row.name == before.name):
            report.unchanged += 1
    return report


async def sync_list(db: aiosqlite.Connection, list_name: str, keep: set[str]) -> list[str]:
    """Unsubscribe from ``list_name`` every member whose address (any case) is not in ``keep``."""
    lst = await db_members.get_list(db, list_name)
    if lst is None:
        raise RosterError(f"no such list: {list_name}")
    wanted = {a.lower() for a in keep}
    dropped = []
    for row in await db_members.member_overview(db, lst.id):
        if row["address"].lower() not in wanted:
            member = await db_members.get_member(db, row["address"])
            assert member is not None
            await db_members.unsubscribe(db, lst.id, member.id)
            dropped.append(row["address"])
    return dropped
