"""systemd's notify protocol: readiness and the watchdog, without a dependency.

A datagram to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace); nothing at all when systemd did not start us, so ``serve`` behaves
the same from a shell, a test or ``Type=notify``.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``state`` (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``...); False if nobody listens."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:  # never blocks: a listener that does not read must not freeze the event loop
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
            sock.sendto(state.encode(), address)
    except BlockingIOError:
        log.debug("sd_notify %s: the listener's queue is full; dropped", state)
        return False
    except OSError as exc:
        log.warning("sd_notify %s: %s", state, exc)
        return False
    return True


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half systemd's WatchdogSec), or None if not asked."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2
