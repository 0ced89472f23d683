"""What the benchmarks share: ports, Postfix's smtp-sink, a club's configuration."""

from __future__ import annotations

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
