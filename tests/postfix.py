"""A private Postfix instance for end-to-end tests: own config, queue, log and port.

Follows the recipe in the project's Postfix notes: copy /etc/postfix, point the copy
at its own directories, register it as an alternate configuration directory in the
default main.cf (Postfix insists), and start it. Every daemon runs unchrooted, so the
instance needs nothing copied into its queue directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

BASE = Path("/var/tmp/lmtpd-tests")


def available() -> bool:
    return shutil.which("postfix") is not None and shutil.which("postconf") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postconf(*args: str) -> str:
    return subprocess.run(["postconf", *args], check=True, capture_output=True, text=True).stdout


def _add_to_default(param: str, value: str) -> None:
    """Add ``value`` to a list parameter of the default /etc/postfix/main.cf, once."""
    current = _postconf("-h", param).strip()
    items = current.replace(",", " ").split()
    if value not in items:
        _postconf("-e", f"{param} = {' '.join(items + [value])}")


class Postfix:
    def __init__(self, name: str, club_domain: str, routes: dict[str, str], settings: dict[str, str] | None = None):
        """``routes``: domain -> transport, e.g. ``lmtp:unix:private/lmtpd``."""
        self.root = BASE / name
        self.conf = self.root / "conf"
        self.queue = self.root / "queue"
        self.data = self.root / "data"
        self.maillog = self.root / "maillog"
        self.port = free_port()
        self.club_domain = club_domain
        self.routes = routes
        self.extra = settings or {}

    @property
    def lmtp_socket(self) -> Path:
        return self.queue / "private" / "lmtpd"

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        # postfix writes its errors to syslog, which may not exist: capture a tty-less run
        return subprocess.run(["postfix", "-c", str(self.conf), *args], capture_output=True, text=True, timeout=60)

    def start(self) -> None:
        self.stop_if_running()
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        shutil.copytree("/etc/postfix", self.conf)
        self.queue.mkdir()
        self.data.mkdir()
        shutil.chown(self.data, user="postfix")
        _add_to_default("alternate_config_directories", str(self.conf))
        _add_to_default("maillog_file_prefixes", str(BASE))
        transport = ", ".join(f"{d}={t}" for d, t in self.routes.items())
        settings = {
            "queue_directory": self.queue,
            "data_directory": self.data,
            "maillog_file": self.maillog,
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "myhostname": f"mx.{self.club_domain}",
            "mydestination": "",
            "alias_maps": "",
            "alias_database": "",
            "relay_domains": self.club_domain,
            "mynetworks": "127.0.0.0/8",
            "transport_maps": f"inline:{{ {transport} }}",
            "smtpd_tls_security_level": "none",
            "smtp_tls_security_level": "none",
            "smtp_dns_support_level": "disabled",
            "smtpd_peername_lookup": "no",
            "lmtp_connection_cache_on_demand": "yes",
            "delay_warning_time": "0",
            "minimal_backoff_time": "2s",
            "maximal_backoff_time": "4s",
            "queue_run_delay": "2s",
            **self.extra,
        }
        _postconf("-c", str(self.conf), "-e", *[f"{k} = {v}" for k, v in settings.items()])
        _postconf("-c", str(self.conf), "-F", "*/*/chroot = n")
        _postconf("-c", str(self.conf), "-F", f"smtp/inet/service = 127.0.0.1:{self.port}")
        for step in (["post-install", "create-missing"], ["check"], ["start"]):
            result = self._run(*step)
            if result.returncode != 0:
                raise RuntimeError(
                    f"postfix {' '.join(step)} failed ({result.returncode}): "
                    f"{result.stdout}{result.stderr}{self.log()[-2000:]}"
                )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postfix did not listen on {self.port}: {self.log()[-2000:]}") from None
                time.sleep(0.1)

    def stop_if_running(self) -> None:
        if (self.conf / "main.cf").exists():
            self._run("stop")

    def stop(self) -> None:
        self.stop_if_running()

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def flush(self) -> None:
        self._run("flush")

    def queue_ids(self) -> list[str]:
        out = subprocess.run(["postqueue", "-c", str(self.conf), "-j"], capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if line.strip()]


def environment_check() -> str | None:
    """Why Postfix tests cannot run here, or None."""
    if not available():
        return "postfix is not installed (apt-get install postfix swaks)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root"
    return None
