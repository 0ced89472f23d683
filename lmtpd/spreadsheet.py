"""Member files as spreadsheets write them, read forgivingly; and written back the same way.

Pure functions: bytes in, rows and errors out (every error with its line, in one
pass), and rows to bytes for ``members export``. What Excel, LibreOffice and Google
Sheets export is read as it comes: a UTF-8 byte order mark, CRLF line ends, comma,
semicolon or tab between fields (sniffed), quoted fields, trailing empty columns, a
header row naming the columns in any case and order (``email``, ``e-mail`` or
``address``; ``name``; ``lists``) with extra columns ignored. Without a header the
columns are address, name, lists. A file that is not UTF-8 is read as Windows-1252,
the encoding of Excel's plain "CSV" on Windows.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

DELIMITERS = (",", ";", "\t")
ADDRESS_HEADERS = ("email", "e-mail", "address", "email address", "e-mail address", "mail")
NAME_HEADERS = ("name", "full name", "display name")
LISTS_HEADERS = ("lists", "list")
LEGACY = ("address", "name", "lists")
POSITIONS = {"address": 0, "name": 1, "lists": 2}  # without a header


@dataclass(frozen=True)
class SheetRow:
    """One member as a file gives it (checked by the caller's ``check``)."""

    line: int
    address: str
    name: str
    lists: tuple[str, ...]


def decode(data: bytes) -> str:
    """Text of a file: UTF-8 (with or without BOM), else Windows-1252."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def sniff_delimiter(text: str) -> str:
    """The delimiter of the first non-empty line, counted outside quotes; comma if none."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    counts = dict.fromkeys(DELIMITERS, 0)
    quoted = False
    for char in first:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in counts:
            counts[char] += 1
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _header(cells: list[str]) -> dict[str, int] | None:
    """Column positions, if ``cells`` is a header row (it names an address column)."""
    names = [c.strip().lower() for c in cells]
    columns: dict[str, int] = {}
    for key, accepted in (("address", ADDRESS_HEADERS), ("name", NAME_HEADERS), ("lists", LISTS_HEADERS)):
        found = next((i for i, n in enumerate(names) if n in accepted), None)
        if found is not None:
            columns[key] = found
    return columns if "address" in columns else None


def parse(
    data: bytes | str,
    check: Callable[[str, str, list[str]], tuple[str, str, tuple[str, ...]]],
    known_lists: Iterable[str] | None = None,
) -> tuple[list[SheetRow], list[str]]:
    """Every row and every error (``line N: ...``) of a member file, CSV or ``members export`` JSON.

    ``check(address, name, lists)`` returns the address, name and lists as stored, or raises
    ValueError with the reason; ``known_lists`` (if given) turns unknown list names into
    errors here, in the same pass. Addresses that differ only in case are duplicates.
    """
    text = decode(data) if isinstance(data, bytes) else data.removeprefix("\ufeff")
    if text.lstrip().startswith("["):
        records, errors = _json_records(text)
    else:
        records, errors = _csv_records(text)
    known = {n.lower() for n in known_lists} if known_lists is not None else None
    rows: list[SheetRow] = []
    seen: dict[str, tuple[int, str]] = {}
    for line, address, name, lists in records:
        try:
            stored, name, names = check(address, name, lists)
        except ValueError as exc:
            errors.append((line, str(exc)))
            continue
        missing = [n for n in names if known is not None and n not in known]
        if missing:
            errors.append((line, f"no such list: {', '.join(missing)}"))
            continue
        key = stored.lower()
        if key in seen:
            first_line, first = seen[key]
            same = "" if first == stored else f" (as {first}: addresses that differ only in case are one member)"
            errors.append((line, f"{stored} appears already on line {first_line}{same}"))
            continue
        seen[key] = (line, stored)
        rows.append(SheetRow(line, stored, name, names))
    return rows, [f"line {line}: {message}" for line, message in sorted(errors, key=lambda e: e[0])]


def _csv_records(text: str) -> tuple[list[tuple[int, str, str, list[str]]], list[tuple[int, str]]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sniff_delimiter(text))
    records: list[tuple[int, str, str, list[str]]] = []
    errors: list[tuple[int, str]] = []
    columns: dict[str, int] | None = None
    width, described = 3, ",".join(LEGACY)
    first = True
    line = 0
    try:
        for cells in reader:
            start = line = reader.line_num  # a quoted field may span lines: the row's last line, as csv counts
            while cells and not cells[-1].strip():  # trailing empty columns, as spreadsheets add them
                cells.pop()
            if not cells:
                continue
            if first:
                first = False
                columns = _header(cells)
                if columns is not None:
                    width, described = len(cells), ",".join(c.strip() for c in cells)
                    continue
            if len(cells) > width:
                errors.append((start, f"expected {described} but found {len(cells)} fields"))
                continue
            address, name, lists = (_cell(cells, columns or POSITIONS, key) for key in LEGACY)
            records.append((start, address, name, re.split(r"[;,\s]+", lists)))
    except csv.Error as exc:
        errors.append((line + 1, f"cannot read the file from here on: {exc}"))
    return records, errors


def _cell(cells: list[str], columns: dict[str, int], key: str) -> str:
    at = columns.get(key)
    return cells[at].strip() if at is not None and at < len(cells) else ""


def _json_records(text: str) -> tuple[list[tuple[int, str, str, list[str]]], list[tuple[int, str]]]:
    """``members export --format json``: a list of {"address", "name", "lists"}; "line" is the entry's number."""
    try:
        entries = json.loads(text)
    except ValueError as exc:
        return [], [(1, f"not valid JSON: {exc}")]
    records: list[tuple[int, str, str, list[str]]] = []
    errors: list[tuple[int, str]] = []
    for number, entry in enumerate(entries if isinstance(entries, list) else [entries], 1):
        if not isinstance(entry, dict) or not isinstance(entry.get("address"), str):
            errors.append((number, "expected an object with an address"))
            continue
        lists = entry.get("lists") or []
        if isinstance(lists, str):
            lists = lists.split()
        records.append((number, entry["address"], str(entry.get("name") or ""), [str(n) for n in lists]))
    return records, errors


def export(members: list[dict], fmt: str) -> bytes:
    """Members (address, name, lists) as ``members import`` reads them back: CSV with a header, or JSON."""
    ordered = sorted(members, key=lambda m: m["address"].lower())
    if fmt == "json":
        entries = [{"address": m["address"], "name": m["name"], "lists": sorted(m["lists"])} for m in ordered]
        return (json.dumps(entries, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(LEGACY)
    for m in ordered:
        writer.writerow([m["address"], m["name"], " ".join(sorted(m["lists"]))])
    return out.getvalue().encode("utf-8")
