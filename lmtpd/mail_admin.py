"""Administrators by mail: ``add``/``remove`` members, and ``reminders <list>`` for members.

Administrators are the club's administrator, ``[commands] owners`` (every list) and a
list's moderators (that list). They need not be members themselves: such an
administrator is answered as a *guest*, a member record without an id that may use
only the commands that touch no membership of its own. The proof rules are those of
every change (:mod:`lmtpd.commands`): an unproven ``add`` waits for a confirmation
sent to the administrator's own address.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime

from . import headers
from .config import Config
from .roster import RosterError, check_address, check_not_ours
from .store import commands as store
from .store import members
from .store.members import MailingList, Member

ADMIN_VERBS = ("add", "remove")
REMINDER_VERBS = ("pause reminder", "resume reminder")
GUEST_VERBS = ("help", "lists", "reminders", "add", "remove", *REMINDER_VERBS, "confirm", "end")  # not members
MAX_REMINDERS = 20  # listed in one answer


def is_owner(address: str, cfg: Config) -> bool:
    wanted = address.lower()
    return wanted == cfg.admin.lower() or wanted in cfg.commands.owners


def may_administer(lst: MailingList, address: str, cfg: Config) -> bool:
    """Owners administer every list, moderators their own."""
    return is_owner(address, cfg) or address.lower() in (m.lower() for m in lst.moderators.split())


def is_administrator(db: sqlite3.Connection, address: str, cfg: Config, list_name: str = "") -> bool:
    """May ``address`` administer ``list_name`` (any list, if none is named) by mail?"""
    if is_owner(address, cfg):
        return True
    if list_name:
        lst = members.find_list(db, list_name)
        return lst is not None and may_administer(lst, address, cfg)
    return bool(store.lists_moderated_by(db, address))


def guest(address: str) -> Member:
    """An administrator who is no member: answered, never subscribed, paused or counted."""
    return Member(
        id=None,  # type: ignore[arg-type]  (no row: replies carry no member id)
        address=address, name="", active=1, created_at=0.0, bounce_score=0, last_bounce_day=None,
        last_bounce_at=None, delivery_disabled_at=None, disabled_reason="", disabled_reported=0, may_post=0,
        paused_at=None, paused_until=None, paused_by="",
    )  # fmt: skip


def guest_refusal(member: Member, verb: str) -> str:
    """The answer to a guest's command about its own memberships, or "" when it may go on."""
    if member.id is not None or verb in GUEST_VERBS:
        return ""
    return f"{verb}: you are not a member of the club; as an administrator you may use add, remove and reminders.\n"


@dataclass(frozen=True)
class Target:
    """What ``add``/``remove`` name: ``<list> <address> [name]``."""

    list_name: str
    address: str
    name: str = ""


def parse_target(arg: str) -> Target | None:
    """``youth erik@example.org Erik Larsen`` (the address may be in <>); None if list or address is missing."""
    words = arg.split()
    if len(words) < 2 or "@" in words[0] or "@" not in words[1]:
        return None
    address = words[1].strip("<>,;")
    return Target(words[0].lower(), address, " ".join(words[2:]).strip())


def carry_out(db: sqlite3.Connection, member: Member, cmd_verb: str, arg: str, cfg: Config, now: float) -> str:
    """``add``, ``remove`` or ``reminders`` for ``member`` (proven or confirmed); the answer's paragraph."""
    if cmd_verb == "reminders":
        return reminders_text(db, member, arg, cfg, now)
    if cmd_verb in REMINDER_VERBS:
        return pause_reminder(db, member, int(arg), cmd_verb == "pause reminder", cfg)
    target = parse_target(arg)
    if target is None:
        hint = " To leave a list yourself, send 'leave youth'." if cmd_verb == "remove" else ""
        return f"{cmd_verb}: name a list and an address, e.g. '{cmd_verb} youth erik@example.org'.{hint}\n"
    lst = members.find_list(db, target.list_name)
    if lst is None:
        return f"{cmd_verb} {target.list_name}: no such list (send 'lists' to see them).\n"
    if not may_administer(lst, member.address, cfg):
        hint = f" To leave it yourself, send 'leave {lst.name}'." if cmd_verb == "remove" else ""
        return f"{cmd_verb} {lst.name}: only the list's administrators may {cmd_verb} members.{hint}\n"
    try:
        address = check_address(target.address)
        check_not_ours(address, cfg.domain)
        name = headers.check_text("a member's name", target.name)
    except (RosterError, headers.HeaderValueError) as exc:
        return f"{cmd_verb} {lst.name}: {exc}.\n"
    if cmd_verb == "add":
        created, added = store.add_to_list(db, lst.id, address, name, now)
        if not added:
            return f"{address} is a member of {lst.name} already.\n"
        return f"Added {address} to {lst.name}@{cfg.domain}" + (" (new in the club).\n" if created else ".\n")
    if store.remove_from_list(db, lst.id, address):
        return f"Removed {address} from {lst.name}@{cfg.domain}.\n"
    return f"{address} is not a member of {lst.name}.\n"


def reminders_text(db: sqlite3.Connection, member: Member, list_name: str, cfg: Config, now: float) -> str:
    """A list's scheduled reminders and their next occurrence, for its members and administrators."""
    from .reminder_admin import describe  # reminders import ingest, which imports commands: not at the top
    from .reminders import rule_of
    from .schedule import RuleError, occurrences, zone
    from .store import reminders as reminder_store

    lst = members.find_list(db, list_name) if list_name else None
    if lst is None:
        return "reminders: name a list, e.g. 'reminders youth' (send 'lists' to see them).\n"
    mine = member.id is not None and members.in_list(db, lst.id, member.id)
    if not mine and not may_administer(lst, member.address, cfg):
        return f"reminders {lst.name}: shown to the members of the list only.\n"
    lines = []
    for r in [r for r in reminder_store.active(db) if r.list_name == lst.name][:MAX_REMINDERS]:
        try:
            nxt = occurrences(rule_of(r), max(now, r.created_at), 1)
        except RuleError:
            nxt = []
        when = datetime.fromtimestamp(nxt[0].due_at, zone(r.timezone)).strftime("%Y-%m-%d %H:%M %Z") if nxt else ""
        subject = headers.one_line(r.subject)
        lines.append(f"  #{r.id} {when or 'no further occurrence'}: {subject}\n    ({describe(r)})\n")
    if not lines:
        return f"{lst.name} has no scheduled reminders.\n"
    return f"Reminders of {lst.name}@{cfg.domain}, with their next occurrence:\n" + "".join(lines)


def pause_reminder(db: sqlite3.Connection, member: Member, reminder_id: int, paused: bool, cfg: Config) -> str:
    """``pause reminder 3`` / ``resume reminder 3``: for the administrators of the reminder's list."""
    from .store import reminders as reminder_store  # reminders import ingest, which imports commands

    verb = "pause" if paused else "resume"
    r = reminder_store.find(db, reminder_id)
    lst = members.find_list(db, r.list_name) if r is not None else None
    if r is None or lst is None or not may_administer(lst, member.address, cfg):
        # the same words whether it does not exist or is not theirs: no oracle of other lists' reminders
        return f"{verb} reminder {reminder_id}: no such reminder among the lists you administer.\n"
    reminder_store.set_paused_now(db, reminder_id, paused)
    state = "paused: it is not posted until resumed" if paused else "resumed: it is posted again from its next time"
    return f"Reminder {reminder_id} of {lst.name} ({headers.one_line(r.subject)}) {state}.\n"
