"""List rules and message transforms: pure functions over raw bytes and plain values.

The body is never touched: transforms work on the header block only, at byte level,
so whatever the poster signed or encoded reaches the members as it was sent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import getaddresses

from . import headers

_FIELD_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")


@dataclass(frozen=True)
class HeaderInfo:
    """What ingest needs to know about a message, read from its header block."""

    author: str | None  # the single From address, domain lower-cased; None if unusable
    from_problem: str  # why author is None, for the refusal text
    message_id: str
    subject: str
    list_ids: tuple[str, ...] = ()  # List-Id values the message already carries
    x_loops: tuple[str, ...] = ()
    received: int = 0  # how many Received headers: hops so far
    auto_submitted: str = ""
    precedence: str = ""
    autoreply: bool = False  # X-Autoreply and friends


# ------------------------------------------------------------------ addresses

POST, BOUNCES, REQUEST, OWNER = "post", "bounces", "request", "owner"
SUFFIXES = {"-bounces": BOUNCES, "-request": REQUEST, "-owner": OWNER}


@dataclass(frozen=True)
class Recipient:
    """What a club address is for: a list post, its bounces, its request or owner address."""

    kind: str
    list_name: str
    extension: str = ""  # after "+": the VERP-encoded member on a bounce address


def parse_recipient(address: str, domain: str, delimiter: str = "+") -> tuple[Recipient | None, str]:
    """(the address's meaning, or the refusal that says why it has none here).

    ``delimiter`` separates an extension (``youth-bounces+bob=example.net``), as
    Postfix's recipient_delimiter does.
    """
    local, at, dom = address.rpartition("@")
    if not at or not local:
        return None, f"550 5.1.3 <{address}>: bad recipient address syntax"
    if dom.lower().rstrip(".") != domain:
        return None, f"550 5.1.2 <{address}>: this server only accepts mail for {domain}"
    base, _, extension = local.lower().partition(delimiter)
    for suffix, kind in SUFFIXES.items():
        if base.endswith(suffix) and len(base) > len(suffix):
            return Recipient(kind, base[: -len(suffix)], extension), ""
    return Recipient(POST, base, extension), ""


def verp_sender(bounce_address: str, recipient: str, delimiters: str = "+=") -> str:
    """``youth-bounces@myclub.org`` for ``bob@example.net`` -> ``youth-bounces+bob=example.net@myclub.org``.

    ``delimiters``: the extension delimiter and the one that stands for the member's "@".

    A bounce then names the member by the address it comes back to, whatever the
    reporting server wrote (or failed to write) in it.
    """
    if not bounce_address:
        return bounce_address  # the null sender of lmtpd's own reports stays null
    local, _, domain = bounce_address.rpartition("@")
    member_local, _, member_domain = recipient.rpartition("@")
    return f"{local}{delimiters[0]}{member_local}{delimiters[1]}{member_domain}@{domain}"


def verp_recipient(extension: str, delimiters: str = "+=") -> str | None:
    """The member address a VERP extension (``bob=example.net``) encodes."""
    local, eq, domain = extension.rpartition(delimiters[1])
    return f"{local}@{domain}" if eq and local and domain else None


# ---------------------------------------------------------------- posting rules


def poster_refusal(author: str, domain: str, lst: Mapping, member: Mapping | None, in_list: Callable[[], bool]) -> str:
    """Why ``author`` may not post to ``lst``, or "" if they may (the daily limit aside).

    ``in_list`` is asked only for lists open to their own members alone: on the hot
    path, a club-wide list costs no membership lookup.
    """
    name = lst["name"]
    if member is None or not member["active"]:
        return f"550 5.7.1 <{author}> is not a member of {domain} and may not post to {name}"
    if lst["posters"] == "list" and not in_list():
        return f"550 5.7.1 only members of {name} may post to it; <{author}> is not one"
    return ""


def daily_limit(lst: Mapping, default: int) -> int:
    return lst["posts_per_day"] if lst["posts_per_day"] is not None else default


def limit_refusal(name: str, limit: int) -> str:
    return f"550 5.7.1 daily limit reached: {limit} posts per day to {name}"


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """Split into (header block, rest); ``rest`` starts with the blank line, if any.

    Works with CRLF, bare LF, or a mix, and never alters a byte: the two parts
    joined give ``raw`` back.
    """
    if raw.startswith((b"\r\n", b"\n")):
        return b"", raw
    candidates = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n"), raw.find(b"\n\r\n")) if i >= 0]
    if not candidates:
        return raw, b""
    cut = min(candidates)
    # keep the header block's own line ending with it
    end = cut + (2 if raw.startswith(b"\r\n", cut) else 1)
    return raw[:end], raw[end:]


def header_fields(block: bytes) -> list[bytes]:
    """The header block as a list of fields, each with its folded continuation lines."""
    fields: list[bytes] = []
    for line in block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def field_name(field: bytes) -> str:
    m = _FIELD_NAME.match(field)
    return m.group(1).decode("ascii").lower() if m else ""


def header_values(block: bytes, names: set[str]) -> dict[str, list[str]]:
    """Unfolded values of the named fields (lower-case names), in order of appearance.

    8-bit bytes are read as UTF-8 (RFC 6532), anything undecodable kept as
    surrogate escapes, so nothing in a header can make this raise.
    """
    found: dict[str, list[str]] = {}
    for f in header_fields(block):
        name = field_name(f)
        if name in names:
            value = f.split(b":", 1)[1].decode("utf-8", errors="surrogateescape")
            found.setdefault(name, []).append(" ".join(value.split()))
    return found


def read_headers(raw: bytes) -> HeaderInfo:
    """The From, Message-ID and Subject of a message, tolerating bad input."""
    block, _ = split_message(raw)
    values = header_values(
        block,
        {"from", "message-id", "subject", "list-id", "x-loop", "received", "auto-submitted", "precedence",
         "x-autoreply", "x-autorespond", "x-vacation"},
    )  # fmt: skip
    froms = values.get("from", [])
    author: str | None = None
    problem = ""
    if not froms:
        problem = "message has no From header"
    elif len(froms) > 1:
        problem = "message has more than one From header"
    else:
        addresses = [a for _, a in getaddresses(froms) if a]
        if len(addresses) != 1 or "@" not in addresses[0]:
            problem = "From header must name exactly one author address"
        else:
            local, _, domain = addresses[0].rpartition("@")
            if not local or not domain or any(c.isspace() or not c.isprintable() for c in addresses[0]):
                problem = "From header address is malformed (or not UTF-8)"
            else:
                author = f"{local}@{domain.lower()}"
    return HeaderInfo(
        author=author,
        from_problem=problem,
        message_id=headers.text((values.get("message-id") or [""])[0]),
        subject=headers.text((values.get("subject") or [""])[0]),
        list_ids=tuple(values.get("list-id", [])),
        x_loops=tuple(v.lower() for v in values.get("x-loop", [])),
        received=len(values.get("received", [])),
        auto_submitted=headers.text((values.get("auto-submitted") or [""])[0]).lower(),
        precedence=headers.text((values.get("precedence") or [""])[0]).lower(),
        autoreply=any(k in values for k in ("x-autoreply", "x-autorespond", "x-vacation")),
    )


def list_id_value(name: str, description: str, domain: str) -> str:
    """RFC 2919 List-Id: an optional phrase and ``<name.domain>``."""
    ident = f"<{name}.{domain}>"
    return f"{headers.phrase(description)} {ident}" if description else ident


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
