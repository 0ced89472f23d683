"""Time in the tests: an injected clock, and waiting for a condition without sleeping blindly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Clock:
    """Injected time: tests move it instead of sleeping."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def eventually(condition: Callable[[], object], seconds: float = 10, what: str = "") -> None:
    """Poll ``condition`` until true; fail after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.02)
