"""Reading a message as it came: the header block, its fields, what ingest needs to know.

The body is never touched: everything here works on the header block only, at byte
level, so that whatever the poster signed or encoded reaches the members as it was
sent. Nothing in a header can make these functions raise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import getaddresses

from . import headers
from .addresses import normalize_address

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
                author = normalize_address(addresses[0])
    return HeaderInfo(
        author=author,
        from_problem=problem,
        message_id=headers.one_line((values.get("message-id") or [""])[0]),
        subject=headers.text((values.get("subject") or [""])[0]),
        list_ids=tuple(values.get("list-id", [])),
        x_loops=tuple(v.lower() for v in values.get("x-loop", [])),
        received=len(values.get("received", [])),
        auto_submitted=headers.one_line((values.get("auto-submitted") or [""])[0]).lower(),
        precedence=headers.one_line((values.get("precedence") or [""])[0]).lower(),
        autoreply=any(k in values for k in ("x-autoreply", "x-autorespond", "x-vacation")),
    )
