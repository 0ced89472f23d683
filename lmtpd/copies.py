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
from email.header import Header, decode_header, make_header
from email.utils import getaddresses
from pathlib import Path

import dkim

from .lists import field_name, header_fields, list_id_value

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


def list_fields(style: ListStyle) -> list[str]:
    """RFC 2919 and RFC 2369 headers, and Precedence and X-Loop."""
    request = f"{style.name}-request@{style.domain}"
    fields = [
        f"List-Id: {list_id_value(style.name, style.description, style.domain)}",
        f"List-Post: <mailto:{style.address}>",
        f"List-Help: <mailto:{request}?subject=help>",
        f"List-Subscribe: <mailto:{request}?subject=subscribe>",
        f"List-Unsubscribe: <mailto:{request}?subject=unsubscribe>",
    ]
    if style.owner:
        fields.append(f"List-Owner: <mailto:{style.owner}>")
    if style.archive:
        fields.append(f"List-Archive: <{style.archive}>")
    fields += ["Precedence: list", f"X-Loop: {style.address}"]
    return fields


def decode_text(value: str) -> str:
    """An RFC 2047 header value as text; as it is, if it does not decode."""
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


def encode_text(name: str, text: str) -> str:
    """``Name: text`` ready for the wire: plain if ASCII, else RFC 2047 UTF-8, folded."""
    if text.isascii():
        return f"{name}: {text}"
    return f"{name}: " + Header(text, "utf-8", header_name=name).encode()


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


def _value(field: bytes) -> str:
    return field.split(b":", 1)[1].decode("utf-8", "surrogateescape").strip()


def _one_address(value: str) -> tuple[str, str] | None:
    found = [(n, a) for n, a in getaddresses([value]) if a]
    return found[0] if len(found) == 1 else None


def copy_headers(block: bytes, style: ListStyle, mitigate: bool) -> bytes:
    """The header block of the list's copy of a post with header block ``block``."""
    newline = b"\r\n" if b"\r\n" in block or not block else b"\n"
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
            raw_value = _value(f).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            text = decode_text(" ".join(raw_value.split()))
            f = encode_text("Subject", prefixed_subject(text, style.tag)).encode() + newline
        elif name == "from" and mitigate:
            author = _one_address(decode_text(_value(f)))
            if author is not None:
                display = author[0] or author[1].split("@")[0]
                f = _address_field("From", f"{display} via {style.name}", style.address) + newline
        elif name == "reply-to":
            reply_to = f
            continue
        elif name == "cc":
            cc.append(f)
            continue
        kept.append(f if f.endswith(b"\n") else f + newline)
    if not subject_seen and style.tag:
        kept.append(f"Subject: {style.tag}".encode() + newline)
    extra: list[bytes] = []
    if style.reply_to == "list":
        extra.append(_address_field("Reply-To", "", style.address) + newline)
        if author is not None:  # the author, no longer in From, goes to Cc
            cc.append(_address_field("Cc", author[0], author[1]) + newline)
    elif style.reply_to != "poster":
        extra.append(_address_field("Reply-To", "", style.reply_to) + newline)
    elif author is not None and reply_to is None:
        extra.append(_address_field("Reply-To", author[0], author[1]) + newline)
    elif reply_to is not None:
        extra.append(reply_to if reply_to.endswith(b"\n") else reply_to + newline)
    ours = newline.join(f.encode() for f in list_fields(style)) + newline
    return ours + b"".join(kept) + b"".join(extra) + b"".join(c if c.endswith(b"\n") else c + newline for c in cc)


def _address_field(name: str, display: str, address: str) -> bytes:
    """``Name: "Display" <address>``, the display name RFC 2047-encoded if need be."""
    if not display:
        return f"{name}: <{address}>".encode()
    if not display.isascii():
        return f"{name}: {Header(display, 'utf-8').encode()} <{address}>".encode()
    quoted = display.replace("\\", "\\\\").replace('"', '\\"')
    return f'{name}: "{quoted}" <{address}>'.encode()


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
