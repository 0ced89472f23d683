"""A private Postfix instance for end-to-end tests: own config, queue, log and port.

The machine's /etc/postfix is never written. The instance's configuration is a copy,
and every Postfix command runs in a mount namespace of its own (``unshare -m``) in
which that copy is bind-mounted over /etc/postfix: Postfix takes it for its default
configuration, so nothing has to be registered in the real one
(alternate_config_directories, maillog_file_prefixes).

The master and its daemons live in the namespace of one holder process whose stdin
is a pipe from the test process. When the pipe ends, because the tests stopped the
instance or because the test process was killed (even with -9), the holder stops
Postfix and removes the instance's directory.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"  # where Postfix's commands are when PATH lacks them

# In the namespace: the copy over /etc/postfix, start, say so, wait for the end of
# stdin, stop, clean up. $1 = config copy, $2 = postfix command, $3 = the instance's root.
HOLDER = """
mount --bind "$1" /etc/postfix || exit 1
"$2" start >&2 || exit 1
echo started
read _ignored
"$2" stop >&2
rm -rf "$3"
"""
IN_NAMESPACE = 'mount --bind "$0" /etc/postfix && exec "$@"'


def tool(name: str) -> str | None:
    """A Postfix command (or swaks), also when /usr/sbin is not on PATH."""
    return shutil.which(name) or shutil.which(name, path=SBIN)


def available() -> bool:
    return tool("postfix") is not None and tool("postconf") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postconf(*args: str) -> str:
    postconf = tool("postconf")
    assert postconf is not None
    return subprocess.run([postconf, *args], check=True, capture_output=True, text=True, timeout=30).stdout


@functools.cache
def namespaces_work() -> bool:
    """Can this process bind-mount a directory over /etc/postfix in a namespace of its own?"""
    if shutil.which("unshare") is None or not Path("/etc/postfix").is_dir():
        return False
    probe = tempfile.mkdtemp(prefix="pf-probe-")
    try:
        result = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", IN_NAMESPACE, probe, "true"],
            capture_output=True,
            timeout=30,
        )
        return result.returncode == 0
    finally:
        os.rmdir(probe)


class Postfix:
    def __init__(self, name: str, club_domain: str, routes: dict[str, str], settings: dict[str, str] | None = None):
        """``routes``: domain -> transport, e.g. ``lmtp:unix:private/lmtpd``."""
        self.name = name
        self.root = Path(tempfile.mkdtemp(prefix=f"pf-{name}-"))
        self.conf = self.root / "conf"
        self.queue = self.root / "queue"
        self.data = self.root / "data"
        self.maillog = self.root / "maillog"
        self.port = free_port()
        self.club_domain = club_domain
        self.routes = routes
        self.extra = settings or {}
        self.holder: subprocess.Popen[str] | None = None

    @property
    def lmtp_socket(self) -> Path:
        return self.queue / "private" / "lmtpd"

    def _run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A Postfix command in a namespace where the copy is /etc/postfix."""
        path = tool(command[0]) or command[0]
        return subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", IN_NAMESPACE, str(self.conf), path, *command[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.root.chmod(0o755)  # Postfix's own users look inside
        shutil.copytree("/etc/postfix", self.conf, symlinks=True)
        self.queue.mkdir()
        self.data.mkdir()
        shutil.chown(self.data, user="postfix")
        transport = ", ".join(f"{d}={t}" for d, t in self.routes.items())
        settings = {
            "queue_directory": self.queue,
            "data_directory": self.data,
            "maillog_file": self.maillog,
            "maillog_file_prefixes": self.root,
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
        for step in (["postfix", "post-install", "create-missing"], ["postfix", "check"]):
            result = self._run(*step)
            if result.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(step)} failed ({result.returncode}): {result.stdout}{result.stderr}{self.log()[-2000:]}"
                )
        self._start_holder()
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postfix did not listen on {self.port}: {self.log()[-2000:]}") from None
                time.sleep(0.1)

    def _start_holder(self) -> None:
        postfix = tool("postfix")
        assert postfix is not None
        errors = self.root / "holder.log"
        with open(errors, "w") as err:
            self.holder = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", HOLDER, "holder",
                 str(self.conf), postfix, str(self.root)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                start_new_session=True,  # a Ctrl-C meant for pytest does not stop Postfix half-way
            )  # fmt: skip
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline()  # "started", or nothing if it failed
        if line.strip() != "started":
            self.holder.wait(timeout=30)
            raise RuntimeError(
                f"postfix start failed ({self.holder.returncode}): {errors.read_text()}{self.log()[-2000:]}"
            )

    def stop(self) -> None:
        """Stop Postfix (the holder does it when its stdin ends) and remove the instance."""
        holder = self.holder
        if holder is not None and holder.poll() is None:
            assert holder.stdin is not None
            holder.stdin.close()
            try:
                holder.wait(timeout=60)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()
        if holder is not None and holder.stdout is not None:
            holder.stdout.close()
        self.holder = None
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def flush(self) -> None:
        self._run("postfix", "flush")

    def queue_ids(self) -> list[str]:
        out = self._run("postqueue", "-j").stdout
        return [line for line in out.splitlines() if line.strip()]


def header_checks_recipe(repo: Path) -> str:
    """The header_checks value of postfix-lmtp.cf, as a user pastes it (trusting the milter's results)."""
    m = re.search(r"^header_checks = (.+)$", (repo / "postfix-lmtp.cf").read_text(), re.M)
    assert m, "postfix-lmtp.cf lost its header_checks recipe"
    return m.group(1)


def environment_check() -> str | None:
    """Why Postfix tests cannot run here, or None."""
    if not available():
        return "postfix is not installed (apt-get install postfix swaks)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root"
    if not namespaces_work():
        return "cannot bind-mount a private /etc/postfix in a mount namespace (unshare -m)"
    return None


MEMBER_DOMAINS = ("example.net", "example.com", "example.org")


def front(name: str, sink_port: int, extra: dict[str, str] | None = None) -> Postfix:
    """A Postfix in front of lmtpd as a club runs it, started: the club domain to lmtpd over
    LMTP, the members' domains to a sink on ``sink_port``, the policy service asked at RCPT.

    lmtpd relays from 127.0.0.1 (mynetworks); the "internet" (swaks) comes from 127.0.0.9.
    Fails the test when Postfix cannot run here (the end-to-end tests never skip in CI).
    """
    why_not = environment_check()
    if why_not:
        import pytest

        pytest.fail(f"CI must be able to run Postfix: {why_not}")
    routes = {"myclub.org": "lmtp:unix:private/lmtpd"}
    routes.update({d: f"smtp:[127.0.0.1]:{sink_port}" for d in MEMBER_DOMAINS})
    settings = {
        "mynetworks": "127.0.0.1/32",
        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        "smtpd_recipient_restrictions": (
            "permit_mynetworks, reject_unauth_destination, check_policy_service unix:private/lmtpd-policy"
        ),
        **(extra or {}),
    }
    instance = Postfix(name, "myclub.org", routes, settings)
    instance.start()
    return instance


def marks() -> list:
    """An end-to-end module's ``pytestmark``: marked ``postfix``; skipped where Postfix cannot
    run, except in CI, where such a test fails instead of hiding."""
    import pytest

    why_not = environment_check()
    return [
        pytest.mark.postfix,
        pytest.mark.skipif(why_not is not None and not os.environ.get("CI"), reason=why_not or ""),
    ]
