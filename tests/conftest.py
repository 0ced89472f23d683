"""Fixtures only; what they are built from lives in tests/helpers/.

``club_config``  a configured club (lists, members, a real SQLite file), no server running;
                 LMTP would listen on a Unix socket in ``short_dir``, copies go to ``sink``
``service``      lmtpd's service running for ``club_config``: LMTP, delivery on this loop
``sink``         an aiosmtpd far end on 127.0.0.1: the club's smarthost
``net``          DNS on 127.0.0.1 and MX hosts on 127.0.0.2, .3 ... for direct delivery
``clock``        the injected time
``short_dir``    a directory whose path is short enough for Unix sockets

The session leaves the machine as it found it: see tests/helpers/sandbox.py.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from lmtpd.config import Config, load
from lmtpd.daemon import Service

from .helpers.club import populate, running, write_config
from .helpers.mx import Net
from .helpers.sandbox import Sandbox
from .helpers.sink import Sink, start_sink
from .helpers.timing import Clock

SANDBOX = pytest.StashKey[Sandbox]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SANDBOX] = Sandbox()


@pytest.hookimpl(trylast=True)  # after the last fixtures were torn down
def pytest_sessionfinish(session: pytest.Session) -> None:
    problems = session.config.stash[SANDBOX].problems()
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", "the test session changed the machine", red=True)
        for line in problems:
            reporter.write_line(line, red=True) if reporter is not None else print(line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    config.stash[SANDBOX].close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: Unix socket paths are limited to ~100 bytes."""
    path = Path(tempfile.mkdtemp(prefix="lm"))  # in the session's directory, see helpers/sandbox.py
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    s = await start_sink()
    yield s
    s.close()


@pytest.fixture
async def club_config(short_dir: Path, sink: Sink) -> Config:
    """A configured club with lists and members; no server runs; the relay points at ``sink``."""
    cfg = load(write_config(short_dir, f"unix:{short_dir}/lmtpd.sock", sink.port))
    await populate(cfg)
    return cfg


@pytest.fixture
async def service(club_config: Config, clock: Clock) -> AsyncIterator[Service]:
    """lmtpd's service running for ``club_config``, on this event loop and ``clock``."""
    async with running(club_config, clock) as svc:
        yield svc


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    """An empty DNS zone and no MX hosts yet; ``net.mx()`` and ``net.club()`` add them."""
    n = Net(tmp_path)
    yield n
    n.close()
