"""What a list's copy looks like: its header block, built once per post.

Pure functions of the post's header block and the list's settings. Only headers
change: the body bytes go out exactly as they came, so the poster's own DKIM body
hash stays valid. The copy carries RFC 2919/2369 list headers, a subject prefix
that never stacks, the list's Reply-To policy, and, when the author's domain asks
receivers to reject or quarantine unaligned mail, a From rewritten to the list
(DMARC mitigation) with the author moved to Reply-To (or Cc).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from email.utils import getaddresses
from functools import lru_cache
from pathlib import Path

import dkim

from . import headers
from .message import field_name, header_fields

# Removed from every incoming post before ours are added: list headers of any list,
# and headers that leak routing or privacy.
REPLACED = frozenset(
    {
        "list-id", "list-post", "list-help", "list-subscribe", "list-unsubscribe", "list-owner",
        "list-archive", "list-unsubscribe-post", "precedence", "x-loop",
        "return-path", "delivered-to", "x-original-to", "bcc",
    }
)  # fmt: skip
REPLY_PREFIX = re.compile(r"^\s*((re|aw|sv|antw|odp|r)\s*(\[\d+\])?\s*:\s*)+", re.I)


@dataclass(frozen=True)
class ListStyle:
    """The settings of a list that shape its copies."""

    name: str
    domain: str
    description: str = ""
    prefix: str | None = None  # None: "[name]"; "": no prefix
    reply_to: str = "poster"  # "poster" (leave it), "list", or an address
    archive: str = ""
    owner: str = ""  # the administrator, for List-Owner

    @property
    def address(self) -> str:
        return f"{self.name}@{self.domain}"

    @property
    def tag(self) -> str:
        return f"[{self.name}]" if self.prefix is None else self.prefix


def list_id_value(name: str, description: str, domain: str) -> str:
    """RFC 2919 List-Id: an optional phrase and ``<name.domain>``."""
    ident = f"<{name}.{domain}>"
    return f"{headers.phrase(description)} {ident}" if description else ident


@lru_cache(maxsize=256)
def list_fields(style: ListStyle) -> tuple[bytes, ...]:
    """RFC 2919 and RFC 2369 headers, and Precedence and X-Loop; the same for every post of a
    list, so built once per list setting (a pure function of a frozen style)."""
    request = f"{style.name}-request@{style.domain}"
    fields = [
        ("List-Id", list_id_value(style.name, style.description, style.domain)),
        ("List-Post", f"<mailto:{style.address}>"),
        ("List-Help", f"<mailto:{request}?subject=help>"),
        ("List-Subscribe", f"<mailto:{request}?subject=subscribe>"),
        ("List-Unsubscribe", f"<mailto:{request}?subject=unsubscribe>"),
    ]
    if style.owner:
        fields.append(("List-Owner", f"<mailto:{style.owner}>"))
    if style.archive:
        fields.append(("List-Archive", f"<{style.archive}>"))
    fields += [("Precedence", "list"), ("X-Loop", style.address)]
    return tuple(headers.field(name, value) for name, value in fields)


def prefixed_subject(subject: str, tag: str) -> str:
    """``Re: [youth] Re: [youth] x`` -> ``Re: [youth] x``; the tag appears once, first."""
    if not tag:
        return subject
    rest = subject.replace(tag, " ")
    reply = bool(REPLY_PREFIX.match(rest))
    while True:
        stripped = REPLY_PREFIX.sub("", rest, count=1).strip()
        if stripped == rest.strip():
            break
        rest = stripped
    rest = " ".join(rest.split())
    return f"{'Re: ' if reply else ''}{tag} {rest}".rstrip()


def _one_address(value: bytes) -> tuple[str, str] | None:
    """(display name, address) of a From that names exactly one; the name made safe text."""
    raw = value.split(b":", 1)[1].decode("utf-8", "replace")
    found = [(n, a) for n, a in getaddresses([" ".join(raw.split())]) if a]
    if len(found) != 1:
        return None
    name, address = found[0]
    if any(c.isspace() or c in '<>"' or ord(c) < 32 for c in address) or "@" not in address:
        return None
    return headers.text(name), address


def copy_headers(block: bytes, style: ListStyle, mitigate: bool) -> bytes:
    """The header block of the list's copy of a post with header block ``block``.

    Every field built here comes from :mod:`lmtpd.headers`: the poster's Subject
    and display name are decoded and stripped of control characters first, so an
    encoded-word that decodes to a line break adds no header line.
    """
    newline = b"\r\n" if b"\r\n" in block or not block else b"\n"

    def line(f: bytes) -> bytes:
        return f.replace(b"\r\n", newline) + newline

    kept: list[bytes] = []
    author: tuple[str, str] | None = None
    reply_to: bytes | None = None
    cc: list[bytes] = []
    subject_seen = False
    for f in header_fields(block):
        name = field_name(f)
        if name in REPLACED:
            continue
        if name == "subject" and not subject_seen:
            subject_seen = True
            f = line(headers.field("Subject", prefixed_subject(headers.text(f.split(b":", 1)[1]), style.tag)))
        elif name == "from" and mitigate:
            author = _one_address(f)
            if author is not None:
                display = author[0] or author[1].split("@")[0]
                f = line(headers.address_field("From", f"{display} via {style.name}", style.address))
        elif name == "reply-to":
            reply_to = f
            continue
        elif name == "cc":
            cc.append(f)
            continue
        kept.append(f if f.endswith(b"\n") else f + newline)
    if not subject_seen and style.tag:
        kept.append(line(headers.field("Subject", style.tag)))
    extra: list[bytes] = []
    if style.reply_to == "list":
        extra.append(line(headers.address_field("Reply-To", "", style.address)))
        if author is not None:  # the author, no longer in From, goes to Cc
            cc.append(line(headers.address_field("Cc", author[0], author[1])))
    elif style.reply_to != "poster":
        extra.append(line(headers.address_field("Reply-To", "", style.reply_to)))
    elif author is not None and reply_to is None:
        extra.append(line(headers.address_field("Reply-To", author[0], author[1])))
    elif reply_to is not None:
        extra.append(reply_to if reply_to.endswith(b"\n") else reply_to + newline)
    ours = b"".join(line(f) for f in list_fields(style))
    return ours + b"".join(kept) + b"".join(extra) + b"".join(c if c.endswith(b"\n") else c + newline for c in cc)


# ------------------------------------------------------------------ DKIM signing

SIGNED_HEADERS = [
    b"from", b"to", b"cc", b"reply-to", b"subject", b"date", b"message-id", b"mime-version",
    b"content-type", b"list-id", b"list-post", b"list-help", b"list-subscribe", b"list-unsubscribe",
    b"list-owner", b"list-archive",
]  # fmt: skip


class SigningError(Exception):
    """The DKIM key cannot be used."""


class Signer:
    """Signs each post's copy for the club domain (relaxed/relaxed), so that a copy whose
    From was rewritten to the list passes DMARC on the club domain's own signature."""

    def __init__(self, domain: str, selector: str, key: bytes):
        self.domain = domain.encode()
        self.selector = selector.encode()
        self.key = key
        try:
            self.sign(b"From: <probe@example.org>\r\n", b"\r\nprobe\r\n")
        except dkim.DKIMException as exc:
            raise SigningError(f"DKIM key cannot sign: {exc}") from None

    @classmethod
    def from_file(cls, domain: str, selector: str, path: Path) -> Signer:
        try:
            key = path.read_bytes()
        except OSError as exc:
            raise SigningError(f"cannot read DKIM key {path}: {exc.strerror or exc}") from None
        return cls(domain, selector, key)

    def sign(self, headers: bytes, body: bytes) -> bytes:
        """The header block with a DKIM-Signature first; the body as it will be sent (CRLF)."""
        wire = _crlf(headers) + _crlf(body)
        signature = dkim.sign(
            wire, self.selector, self.domain, self.key,
            canonicalize=(b"relaxed", b"relaxed"), include_headers=SIGNED_HEADERS,
        )  # fmt: skip
        newline = b"\r\n" if b"\r\n" in headers or not headers else b"\n"
        return signature.replace(b"\r\n", newline) + headers


def _crlf(data: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", data)


def dns_record(selector: str, domain: str, public_der: bytes) -> str:
    """The TXT record that publishes a DKIM public key, in zone-file form."""
    value = "v=DKIM1; k=rsa; p=" + base64.b64encode(public_der).decode()
    chunks = " ".join(f'"{value[i : i + 250]}"' for i in range(0, len(value), 250))
    return f"{selector}._domainkey.{domain}. IN TXT ( {chunks} )"
