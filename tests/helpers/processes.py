"""lmtpd as its own process, from this source tree: commands, ``serve``, and its children."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from lmtpd.config import load

from .club import REPO


async def spawn_lmtpd(config: Path, *args: str, **kwargs: Any) -> asyncio.subprocess.Process:
    """``python -m lmtpd --config CONFIG ARGS`` from this source tree."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lmtpd", "--config", str(config), *args,
        env=dict(os.environ, PYTHONPATH=str(REPO)), **kwargs,
    )  # fmt: skip


async def start_serve(config: Path, *args: str) -> asyncio.subprocess.Process:
    """``lmtpd serve`` as its own process, logging to serve.log; waits for the socket."""
    log_path = config.parent / "serve.log"
    with open(log_path, "ab") as log:
        proc = await spawn_lmtpd(config, "serve", *args, stderr=log)
    listen = load(config).lmtp.listen
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        if proc.returncode is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {log_path.read_text()}")
        try:
            if listen.path is not None:
                _, w = await asyncio.open_unix_connection(str(listen.path))
            else:
                assert listen.host is not None and listen.port is not None
                _, w = await asyncio.open_connection(listen.host, listen.port)
            w.close()
            return proc
        except OSError:
            if loop.time() > deadline:
                proc.kill()
                raise AssertionError("serve did not start listening") from None
            await asyncio.sleep(0.05)


async def terminate(proc: asyncio.subprocess.Process, seconds: float = 20) -> int:
    """SIGTERM and the exit status; killed (and the test failed) if it takes longer than ``seconds``."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.wait(), seconds)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"lmtpd did not stop within {seconds} s of SIGTERM") from None


@asynccontextmanager
async def serving(config: Path, seconds: float = 30) -> AsyncIterator[asyncio.subprocess.Process]:
    """``lmtpd serve`` for the body of a ``with``; afterwards it must stop cleanly on SIGTERM."""
    proc = await start_serve(config)
    try:
        yield proc
    except BaseException:
        await terminate(proc, seconds)
        raise
    assert await terminate(proc, seconds) == 0


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (serve's delivery worker)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
