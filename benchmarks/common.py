"""What the benchmarks share: ports, Postfix's smtp-sink, a club's configuration, an LMTP client.

The benchmarks stand alone: they import lmtpd and this module, never the tests, so
they run from any checkout or installed tree, and a change to the test helpers
cannot change a measurement.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_smtp_sink() -> tuple[subprocess.Popen, int]:
    """Postfix's C sink on 127.0.0.1: accepts everything, as fast as it can."""
    port = free_port()
    cmd = ["smtp-sink", f"127.0.0.1:{port}", "256"]
    if os.geteuid() == 0:
        cmd[1:1] = ["-u", "nobody"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL), port


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def write_club_config(folder: Path, sink_port: int, lmtp: str = "", relay: str = "", limits: str = "") -> Path:
    """A club listening on folder/lmtpd.sock and relaying to ``sink_port``."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "lmtpd.toml"
    config.write_text(
        f"""domain = "myclub.org"
database = "club.sqlite3"
admin = "admin@myclub.org"
[lmtp]
listen = "unix:{folder}/lmtpd.sock"
socket_mode = "0666"
{lmtp}
[relay]
host = "127.0.0.1"
port = {sink_port}
{relay}
[limits]
{limits}
[auth]
# smtp-source's messages carry no DKIM signature or Received header to check
require = "none"
"""
    )
    return config


def serve_command() -> list[str]:
    """How to start lmtpd; $LMTPD_BENCH_SERVE can wrap it (a profiler, say)."""
    custom = os.environ.get("LMTPD_BENCH_SERVE")
    return custom.split() if custom else [sys.executable, "-m", "lmtpd"]


def start_serve(config: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(log, "w") as stderr:
        return subprocess.Popen([*serve_command(), "--config", str(config), "serve"], env=env, stderr=stderr)


def wait_for_worker(log: Path, proc: subprocess.Popen) -> int:
    """Wait until serve's delivery worker process is up; return its pid."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited with {proc.returncode}")
        for line in log.read_text().splitlines():
            if "delivery worker ready (process " in line:
                return int(line.rsplit("process ", 1)[1].rstrip(")"))
        time.sleep(0.05)
    raise SystemExit("serve's delivery worker did not start")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def lmtp_send(path: Path, mail_from: str, rcpts: list[str], data: bytes) -> list[str]:
    """One LMTP transaction on a Unix socket; the replies after DATA, one per accepted RCPT.

    A copy, cut down, of the tests' raw client (tests/helpers/lmtpclient.py): smtplib's
    LMTP reads only the first reply after DATA, and the benchmarks do not import tests.
    """
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 20)

    async def reply() -> str:
        while True:
            line = (await asyncio.wait_for(reader.readline(), 60)).decode("utf-8", "replace")
            if not line:
                raise ConnectionError("the LMTP server closed the connection")
            if line[3:4] != "-":
                return line.rstrip("\r\n")

    try:
        await reply()  # the greeting
        writer.write(b"LHLO bench.example.org\r\n")
        await reply()
        writer.write(f"MAIL FROM:<{mail_from}>\r\n".encode())
        if not (await reply()).startswith("250"):
            raise ConnectionError("MAIL FROM refused")
        accepted = 0
        for rcpt in rcpts:
            writer.write(f"RCPT TO:<{rcpt}>\r\n".encode())
            accepted += (await reply()).startswith("250")
        if not accepted:
            return []
        writer.write(b"DATA\r\n")
        go = await reply()
        if not go.startswith("354"):
            return [go]
        body = b"".join(b"." + line if line.startswith(b".") else line for line in data.splitlines(keepends=True))
        writer.write(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        replies = [await reply() for _ in range(accepted)]
        writer.write(b"QUIT\r\n")
        await writer.drain()
        return replies
    finally:
        writer.close()
