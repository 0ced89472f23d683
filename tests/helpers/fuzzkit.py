"""Helpers shared by the bounded fuzz tests (tests/test_fuzz_*.py).

Seeds and session counts come from the environment so a developer can run more
locally or replay one seed:

    LMTPD_FUZZ_SEED=7,8,9 LMTPD_FUZZ_SESSIONS=2000 python -m pytest -q tests/test_fuzz_lmtp.py

Every session draws from its own ``random.Random(f"{seed}:{index}")``, so one
session can be replayed alone (``LMTPD_FUZZ_ONLY=index``) with the same bytes.
Findings are collected, not raised at once: one run shows every distinct class
of failure, each with the seed, the session and the tail of its transcript.
"""

from __future__ import annotations

import os
import re
from collections import deque
from dataclasses import dataclass, field


def seeds(default: list[int]) -> list[int]:
    raw = os.environ.get("LMTPD_FUZZ_SEED", "").strip()
    if not raw:
        return default
    return [int(part) for part in raw.replace(" ", ",").split(",") if part]


def sessions(default: int) -> int:
    raw = os.environ.get("LMTPD_FUZZ_SESSIONS", "").strip()
    return int(raw) if raw else default


def only() -> int | None:
    """LMTPD_FUZZ_ONLY=N: run session N of each seed alone (to replay a finding)."""
    raw = os.environ.get("LMTPD_FUZZ_ONLY", "").strip()
    return int(raw) if raw else None


def show(data: bytes, width: int = 240) -> str:
    """Bytes as a readable, single-line Python literal, shortened in the middle."""
    text = repr(bytes(data))
    if len(text) > width:
        text = f"{text[: width // 2]} ...({len(data)} bytes)... {text[-width // 3 :]}"
    return text


class Transcript:
    """The last lines of one session: what the client sent (C:) and got (S:)."""

    def __init__(self, keep: int = 40):
        self.lines: deque[str] = deque(maxlen=keep)

    def sent(self, data: bytes) -> None:
        """Each line (ended by LF, as the server splits them) on a line of its own."""
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            end = len(data) if end < 0 else end + 1
            self.lines.append("C: " + show(data[start:end]))
            start = end

    def sent_body(self, data: bytes) -> None:
        """A message body: its first bytes and size only."""
        self.lines.append(f"C: <message body, {len(data)} bytes> " + show(data, 400))

    def got(self, line: bytes) -> None:
        self.lines.append("S: " + show(line))

    def note(self, text: str) -> None:
        self.lines.append("-- " + text)

    def tail(self, count: int = 30) -> list[str]:
        return list(self.lines)[-count:]


def normalize(text: str) -> str:
    """A reply reduced to its shape, to group findings: <...> and numbers blanked."""
    text = re.sub(r"<[^>]*>", "<...>", text)
    text = re.sub(r"\b[0-9A-F]{10,}\b", "QID", text)
    text = re.sub(r"[\x00-\x1f\x7f\ufffd]", lambda m: repr(m[0])[1:-1], text)
    return text[:70]


@dataclass
class Finding:
    check: str
    shape: str
    detail: str
    seed: int
    session: int
    transcript: list[str]
    count: int = 1


@dataclass
class Findings:
    """Violations grouped by (check, shape); the first example of each is kept.

    ``first``: the checks to list first (the worst ones), in that order.
    """

    what: str
    first: tuple[str, ...] = ()
    items: dict[tuple[str, str], Finding] = field(default_factory=dict)

    def add(self, check: str, shape: str, detail: str, seed: int, session: int, transcript: Transcript | None) -> None:
        key = (check, shape)
        if key in self.items:
            self.items[key].count += 1
            return
        lines = transcript.tail() if transcript is not None else []
        self.items[key] = Finding(check, shape, detail, seed, session, lines)

    def __bool__(self) -> bool:
        return bool(self.items)

    def report(self, stats: str = "", per_check: int = 3) -> str:
        by_check: dict[str, list[Finding]] = {}
        for finding in self.items.values():
            by_check.setdefault(finding.check, []).append(finding)
        rank = {check: n for n, check in enumerate(self.first)}
        checks = sorted(by_check, key=lambda c: (rank.get(c, len(rank)), c))
        out = [f"{self.what}: {len(self.items)} distinct failures in {len(checks)} checks. {stats}".rstrip()]
        out.append("Summary (check, then each distinct reply shape and how often it was seen):")
        for check in checks:
            found = by_check[check]
            out.append(f"  [{check}] x{sum(f.count for f in found)}")
            out.extend(f"      {f.shape}  (x{f.count})" for f in found)
        out.append(
            f"First example of up to {per_check} shapes per check "
            "(replay one session: LMTPD_FUZZ_SEED=<seed> LMTPD_FUZZ_ONLY=<session>):"
        )
        for check in checks:
            for f in by_check[check][:per_check]:
                out.append(f"\n=== [{f.check}] {f.shape}  (seed {f.seed}, session {f.session}, x{f.count})")
                out.append(f"    {f.detail}")
                out.extend("    " + line for line in f.transcript)
        return "\n".join(out)
