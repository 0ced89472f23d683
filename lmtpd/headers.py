"""Header values lmtpd writes: the one place that decides what may stand in a header.

Every header field lmtpd builds (a copy's From, Reply-To, Cc, Subject and list
headers, reports, summaries, forwards) is made here by :func:`field` or
:func:`address_field`. Both refuse CR, LF and NUL in the value, whatever their
origin, so no text can ever add a header line of its own; both encode non-ASCII
text as RFC 2047 UTF-8 words and fold long lines (RFC 5322: 78 characters where a
line can be broken, never more than 998).

Text that comes from outside (a Subject, a display name, both perhaps RFC 2047
encoded-words that decode to control characters) first goes through :func:`text`,
which decodes it and turns every control character into a space: stripped, never
passed through. Text from the administrator is refused instead
(:func:`check_text`), so that a typo is seen, not silently changed.
"""

from __future__ import annotations

import re
from email.header import Header, decode_header, make_header

MAX_LINE = 78  # RFC 5322 2.1.1: should
HARD_LINE = 998  # RFC 5322 2.1.1: must

# C0 controls but TAB, DEL, C1 controls, and lone surrogates (undecodable bytes)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")
_FORBIDDEN = re.compile(r"[\r\n\x00]")
_ADMIN_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # TAB too: it separates listing columns


class HeaderValueError(ValueError):
    """A value that would break out of its header field (CR, LF or NUL)."""


def one_line(value: str | bytes) -> str:
    """Outside text as one safe line, as it is: controls made spaces, spaces folded.

    Bytes are read as UTF-8 (RFC 6532); undecodable bytes become U+FFFD.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    elif not value.isascii():  # lone surrogates (undecodable bytes) can only hide here
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if _CONTROL.search(value):
        value = _CONTROL.sub(" ", value)
    return " ".join(value.split())


def text(value: str | bytes) -> str:
    """Outside text (a Subject, a display name) as one safe line, RFC 2047 words decoded."""
    raw = one_line(value)
    if "=?" not in raw:  # no encoded-word: nothing to decode (the everyday case, and the hot path)
        return raw
    try:
        decoded = str(make_header(decode_header(raw)))
    except (ValueError, LookupError, UnicodeError, AssertionError):
        decoded = raw
    return one_line(decoded)


def printable(value: str) -> str:
    """For listings and logs: control characters shown as escapes, never acted on."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"), value)


def check_text(what: str, value: str) -> str:
    """An administrator's value for a header (description, prefix, name...): no controls."""
    if _ADMIN_FORBIDDEN.search(value):
        raise HeaderValueError(f"{what} may not contain control characters (line breaks, tabs...): {printable(value)}")
    return value


def _refuse_breaks(name: str, value: str) -> None:
    if _FORBIDDEN.search(value) or _FORBIDDEN.search(name) or ":" in name or not name.isascii():
        raise HeaderValueError(f"refusing to write header {printable(name)!r}: {printable(value)!r}")


def field(name: str, value: str, utf8: bool = False) -> bytes:
    """``Name: value`` as wire bytes without line ending: checked, encoded, folded.

    Non-ASCII text becomes RFC 2047 words, unless ``utf8``: structured fields that
    carry addresses (RFC 6532, RFC 6533 global delivery status) keep raw UTF-8.
    """
    _refuse_breaks(name, value)
    if utf8 and not value.isascii():
        return _fold(f"{name}: {value}").encode("utf-8")
    if value.isascii():
        folded = _fold(f"{name}: {value}")
        if all(len(line) <= HARD_LINE for line in folded.split("\r\n")):
            return folded.encode("ascii")
    return f"{name}: {Header(value, 'utf-8', header_name=name).encode(linesep=chr(13) + chr(10))}".encode("ascii")


def block(fields: list[tuple[str, str]], utf8: bool = False) -> bytes:
    """A header block (each field checked by :func:`field`), CRLF line endings, no blank line."""
    return b"".join(field(name, value, utf8) + b"\r\n" for name, value in fields)


def address_field(name: str, display: str, address: str) -> bytes:
    """``Name: "Display" <address>``; the display name RFC 2047-encoded if need be."""
    _refuse_breaks(name, display + address)
    if any(c in address for c in '<>" \t') or "@" not in address:
        raise HeaderValueError(f"refusing to write {name}: not an address: {printable(address)!r}")
    if not display:
        return f"{name}: <{address}>".encode()
    if display.isascii():
        quoted = display.replace("\\", "\\\\").replace('"', '\\"')
        return _fold(f'{name}: "{quoted}" <{address}>').encode("ascii")
    return f"{name}: {Header(display, 'utf-8').encode(linesep=chr(13) + chr(10))} <{address}>".encode()


def phrase(display: str) -> str:
    """A display name (RFC 5322 phrase) ready to stand before ``<addr>`` in a value."""
    _refuse_breaks("phrase", display)
    if display.isascii():
        return '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return Header(display, "utf-8").encode(linesep="\r\n")


def _fold(line: str) -> str:
    """Fold an ASCII header line at spaces to MAX_LINE where it can be (CRLF + space)."""
    if len(line) <= MAX_LINE:
        return line
    out: list[str] = []
    current = ""
    for word in line.split(" "):
        if current and len(current) + 1 + len(word) > MAX_LINE:
            out.append(current)
            current = " " + word if word else " "
        else:
            current = f"{current} {word}" if current else word
    out.append(current)
    return "\r\n".join(out)
