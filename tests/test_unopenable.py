"""A database or key file lmtpd cannot use: one line, a sysexits code, within seconds.

Each case runs the real command line in a process of its own: the failure used to
print its line and then hang forever (aiosqlite's thread, left running when a PRAGMA
failed, kept the interpreter from exiting), or end in a traceback.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import sys
import time
from pathlib import Path

import pytest

from .helpers.club import REPO, write_config

COMMANDS = (("serve",), ("deliver",), ("queue", "list"), ("lists", "list"), ("db", "upgrade"))
CAN_DROP_PRIVILEGES = os.geteuid() == 0 and shutil.which("setpriv") is not None
# Root that cannot read other users' files: /root (and an interpreter under it) stays
# reachable, unlike for a real unprivileged user, and the database owner is "nobody".
AS_UNPRIVILEGED = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner")


async def run(config: Path, *args: str, prefix: tuple[str, ...] = ()) -> tuple[int, str, float]:
    """The command's exit status, its stderr and how long it took; killed after 20 s."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-m", "lmtpd", "--config", str(config), *args,
        env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(proc.communicate(), HANG)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"lmtpd {' '.join(args)} hung") from None
    return proc.returncode or 0, err.decode(errors="replace"), time.monotonic() - started


def config_for(folder: Path, database: str) -> Path:
    path = write_config(folder, f"unix:{folder}/lmtpd.sock", relay_port=1)
    path.write_text(path.read_text().replace('database = "club.sqlite3"', f'database = "{database}"'))
    return path


HANG = 20.0  # seconds after which a command counts as hung and is killed


async def run_all(calls: list[tuple[Path, tuple[str, ...], tuple[str, ...]]]) -> list[tuple[int, str, float]]:
    """Several commands, at most four at a time: two cores, and 25 interpreters starting at
    once would measure the machine, not lmtpd."""
    gate = asyncio.Semaphore(4)

    async def one(config: Path, command: tuple[str, ...], prefix: tuple[str, ...]) -> tuple[int, str, float]:
        async with gate:
            return await run(config, *command, prefix=prefix)

    return await asyncio.gather(*(one(*call) for call in calls))


def assert_one_line(result: tuple[int, str, float], codes: tuple[int, ...] = (os.EX_IOERR, os.EX_CONFIG)) -> str:
    status, err, took = result
    assert status in codes, (status, err)
    assert len(err.splitlines()) == 1 and err.startswith("lmtpd: "), err
    assert took < HANG, took  # a hang used to be forever; "within seconds" on a loaded machine is below this
    return err


def bad_databases(folder: Path) -> dict[str, str]:
    """Kind -> database path, each unusable in its own way."""
    (folder / "text.sqlite3").write_text("this is not an SQLite database, only text long enough for a header\n" * 3)
    (folder / "a-directory").mkdir()
    return {
        "not sqlite": str(folder / "text.sqlite3"),
        "a directory": str(folder / "a-directory"),
        "in /proc": "/proc/version",
        "new file in /proc": "/proc/self/club.sqlite3",
        "missing directory": str(folder / "typo" / "club.sqlite3"),
    }


async def test_unusable_databases_fail_fast_with_one_line(short_dir: Path):
    kinds = bad_databases(short_dir)
    cases = [(kind, command) for kind in kinds for command in COMMANDS]
    configs = {}
    for kind, path in kinds.items():
        folder = short_dir / f"case-{kind.replace(' ', '-').replace('/', '')}"
        folder.mkdir()
        configs[kind] = config_for(folder, path)
    results = await run_all([(configs[kind], command, ()) for kind, command in cases])
    for (kind, command), result in zip(cases, results, strict=True):
        err = assert_one_line(result)
        assert "Traceback" not in err, (kind, command, err)
        assert "database" in err, (kind, command, err)
    assert not (short_dir / "typo").exists()  # a typo'd directory is not created


@pytest.mark.skipif(not CAN_DROP_PRIVILEGES, reason="needs root and setpriv to run as a user without access")
async def test_a_database_the_user_cannot_read(short_dir: Path):
    nobody = pwd.getpwnam("nobody")
    readable = short_dir / "file"
    readable.mkdir()
    config = config_for(readable, "club.sqlite3")
    assert (await run(config, "db", "upgrade"))[0] == 0
    locked = short_dir / "dir"
    locked.mkdir()
    locked_config = config_for(locked, "club.sqlite3")
    assert (await run(locked_config, "db", "upgrade"))[0] == 0
    for path in (readable, locked, *readable.iterdir(), *locked.iterdir()):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    (readable / "club.sqlite3").chmod(0o600)
    locked.chmod(0o700)
    for path in (short_dir, readable, readable / "lmtpd.toml"):
        path.chmod(path.stat().st_mode | 0o555 if path.is_dir() else 0o644)
    (locked / "lmtpd.toml").rename(short_dir / "locked.toml")  # the config stays readable
    locked_config = short_dir / "locked.toml"
    locked_config.write_text(locked_config.read_text().replace('"club.sqlite3"', f'"{locked}/club.sqlite3"'))
    results = await run_all(
        [(cfg, command, AS_UNPRIVILEGED) for cfg in (config, locked_config) for command in COMMANDS]
    )
    for result in results:
        err = assert_one_line(result)
        assert "Traceback" not in err and ("ermission denied" in err or "unable to open" in err), err


async def test_dkim_keygen_into_a_missing_directory(short_dir: Path):
    config = config_for(short_dir, "club.sqlite3")
    result = await run(config, "dkim", "keygen", "--bits", "1024", "--out", str(short_dir / "nope" / "key.pem"))
    err = assert_one_line(result, codes=(os.EX_CANTCREAT,))
    assert "No such file or directory" in err


@pytest.mark.skipif(not CAN_DROP_PRIVILEGES, reason="needs root and setpriv to run as a user without access")
async def test_dkim_keygen_into_a_directory_without_write_permission(short_dir: Path):
    nobody = pwd.getpwnam("nobody")
    config = config_for(short_dir, "club.sqlite3")
    keys = short_dir / "keys"
    os.mkdir(keys, 0o755)
    os.chown(keys, nobody.pw_uid, nobody.pw_gid)
    os.chmod(short_dir, 0o755)
    result = await run(config, "dkim", "keygen", "--bits", "1024", "--out", str(keys / "k.pem"), prefix=AS_UNPRIVILEGED)
    err = assert_one_line(result, codes=(os.EX_CANTCREAT,))
    assert "Permission denied" in err
    assert not (keys / "k.pem").exists()
