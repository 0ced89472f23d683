"""Posting rules: who may post to a list, how often, and which mail is never posted.

Pure functions of plain values and rows; the caller reads the database.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from .message import HeaderInfo, header_values


def poster_refusal(author: str, domain: str, lst: Mapping, member: Mapping | None, in_list: Callable[[], bool]) -> str:
    """Why ``author`` may not post to ``lst``, or "" if they may (the daily limit aside).

    ``in_list`` is asked only for lists open to their own members alone: on the hot
    path, a club-wide list costs no membership lookup.
    """
    name = lst["name"]
    if member is None or not member["active"]:
        return f"550 5.7.1 <{author}> is not a member of {domain} and may not post to {name}"
    if not member.get("may_post", 1):
        return f"550 5.7.1 <{author}> may not post to the lists of {domain}"
    if lst["posters"] == "list" and not in_list():
        return f"550 5.7.1 only members of {name} may post to it; <{author}> is not one"
    return ""


def size_refusal(lst: Mapping, size: int) -> str:
    """Why a post of ``size`` bytes is too big for ``lst``, or "" (lists without a limit of their own take
    whatever [lmtp] max_message_size let through)."""
    limit = lst["max_size"]
    if limit is not None and size > limit:
        return f"552 5.3.4 message too big for list {lst['name']}: {size} bytes, at most {limit}"
    return ""


def daily_limit(lst: Mapping, default: int) -> int:
    return lst["posts_per_day"] if lst["posts_per_day"] is not None else default


def limit_refusal(name: str, limit: int) -> str:
    return f"550 5.7.1 daily limit reached: {limit} posts per day to {name}"


VACATION_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response|antwort)|out of (the )?office|abwesenheit|vacation|"
    r"absence|r[ée]ponse automatique|auto:)",
    re.I,
)


def is_own_copy(headers: HeaderInfo, name: str, domain: str) -> bool:
    """True if the message is a copy this list sent (a member's address leads back)."""
    ident = f"<{name}.{domain}>".lower()
    address = f"{name}@{domain}".lower()
    return any(ident in value.lower() for value in headers.list_ids) or address in headers.x_loops


def drop_reason(headers: HeaderInfo, name: str, domain: str, max_received: int) -> str:
    """Why a message to a list must not be posted, although it is accepted; "" if none."""
    if is_own_copy(headers, name, domain):
        return f"loop: the message is a copy {name}@{domain} sent"
    if headers.received > max_received:
        return f"loop: {headers.received} Received headers (at most {max_received})"
    if headers.auto_submitted and headers.auto_submitted.split(";")[0].strip() != "no":
        return f"automatic mail: Auto-Submitted: {headers.auto_submitted}"
    if headers.precedence in ("bulk", "junk", "list"):
        return f"automatic mail: Precedence: {headers.precedence}"
    if headers.autoreply or VACATION_SUBJECT.match(headers.subject):
        return "automatic mail: a vacation reply"
    return ""


MAILER_DAEMONS = re.compile(r"^(mailer-daemon|postmaster|.*-bounces?|bounces?|no-?reply|.*-request)([+@]|$)", re.I)


def automatic_reason(info: HeaderInfo, mail_from: str, block: bytes) -> str:
    """Why no answer, confirmation or decision may come from this mail (RFC 3834, loops), or "".

    The one detector for every path that answers mail or acts on a reply: mail commands,
    moderators' and authors' replies to token addresses.
    """
    if not mail_from:
        return "the null sender"
    if info.auto_submitted and info.auto_submitted.split(";")[0].strip() != "no":
        return f"Auto-Submitted: {info.auto_submitted}"
    if info.precedence in ("bulk", "junk", "list"):
        return f"Precedence: {info.precedence}"
    if info.autoreply:
        return "a vacation reply (X-Autoreply)"
    if info.list_ids or header_values(block, {"list-unsubscribe", "list-post"}):
        return "list mail"
    for address in (mail_from, info.author or ""):
        if MAILER_DAEMONS.match(address):
            return f"from a mailer address <{address}>"
    if VACATION_SUBJECT.match(info.subject):
        return "a vacation reply (its Subject)"
    return ""
