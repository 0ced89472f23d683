"""A Markdown body sent as written and as HTML: a multipart/alternative, pure functions.

Members whose mail program shows plain text read the Markdown as the administrator
wrote it (it is made to be read that way); the others see it rendered. Rendering is
markdown-it-py's CommonMark with tables and strikethrough; raw HTML in the text is
escaped, never passed through, so a placeholder's value cannot add markup. Both parts
are quoted-printable, so the boundary (it contains ``=_``) can never occur in them.
"""

from __future__ import annotations

import html
import quopri

from markdown_it import MarkdownIt

from . import headers

_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])


def quoted_printable(text: str) -> bytes:
    """UTF-8 text as quoted-printable with CRLF line ends, ending in one."""
    text = text.replace("\r\n", "\n")
    if not text.endswith("\n"):
        text += "\n"
    return quopri.encodestring(text.encode("utf-8")).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def to_html(markdown: str, title: str = "", language: str = "") -> str:
    """The Markdown as a small HTML document (UTF-8)."""
    lang = f' lang="{html.escape(language.replace("_", "-"))}"' if language else ""
    return (
        f'<!DOCTYPE html>\n<html{lang}>\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
        f"</head>\n<body>\n{_MARKDOWN.render(markdown)}</body>\n</html>\n"
    )


def alternative(
    markdown: str, boundary: str, title: str = "", language: str = ""
) -> tuple[list[tuple[str, str]], bytes]:
    """The content header fields and the body of a multipart/alternative: the text as written, then
    its HTML. The fields go through :mod:`lmtpd.headers` at the caller's, the parts' through here."""
    parts = []
    for kind, content in (("plain", markdown), ("html", to_html(markdown, title, language))):
        head = headers.block(
            [("Content-Type", f"text/{kind}; charset=utf-8"), ("Content-Transfer-Encoding", "quoted-printable")]
        )
        parts.append(b"--" + boundary.encode("ascii") + b"\r\n" + head + b"\r\n" + quoted_printable(content))
    body = b"\r\n".join(parts) + b"\r\n--" + boundary.encode("ascii") + b"--\r\n"
    fields = [("Content-Type", f'multipart/alternative; boundary="{boundary}"')]
    return fields, body
