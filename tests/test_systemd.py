"""systemd: the units in contrib/systemd verify, and serve speaks the notify protocol."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lmtpd import sdnotify
from lmtpd.config import load

from .helpers.club import REPO, populate, write_config
from .helpers.processes import start_serve, terminate
from .helpers.sink import Sink

UNITS = REPO / "contrib" / "systemd"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_units_verify(tmp_path: Path):
    """ExecStart= must name a program that exists: here, this interpreter running lmtpd."""
    names = sorted(p.name for p in UNITS.iterdir())
    assert names == [
        "lmtpd-bounces.service", "lmtpd-bounces.timer", "lmtpd-flush.service", "lmtpd-flush.timer", "lmtpd.service",
    ]  # fmt: skip
    for name in names:
        text = (UNITS / name).read_text().replace("/usr/local/bin/lmtpd", f"{sys.executable} -m lmtpd")
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / n) for n in names)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    service = (UNITS / "lmtpd.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes"):
        assert line in service


def test_notify_without_systemd_does_nothing():
    assert sdnotify.notify("READY=1", environ={}) is False
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({}) is None


async def test_serve_says_ready_pings_the_watchdog_and_says_stopping(
    short_dir: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
):
    config = write_config(short_dir, f"unix:{short_dir}/lmtpd.sock", sink.port)
    await populate(load(config))
    path = short_dir / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
    loop = asyncio.get_running_loop()
    try:
        proc = await start_serve(config)
        got = [await asyncio.wait_for(loop.sock_recv(listener, 4096), 20) for _ in range(3)]
        assert b"READY=1\nSTATUS=accepting mail" in got
        assert b"WATCHDOG=1" in got
        assert await terminate(proc) == 0
        rest = []
        while len(rest) < 100:
            try:
                rest.append(listener.recv(4096))
            except BlockingIOError:
                break
        assert b"STOPPING=1" in rest
    finally:
        listener.close()
