"""The test session leaves the machine as it found it.

Every temporary file of the session (pytest's tmp_path, short_dir, the private
Postfix instances, and whatever lmtpd or a tool puts in $TMPDIR) goes under one
directory of its own; at the end nothing but pytest's own tmp_path folders may be
left in it, and it is removed. /etc/postfix must be byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

WATCHED = Path("/etc/postfix")


def fingerprint(folder: Path = WATCHED) -> dict[str, str]:
    """Every file under ``folder``: its mode and the hash of its bytes (or link target)."""
    found: dict[str, str] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            content = os.readlink(path).encode()
        elif path.is_file():
            content = path.read_bytes()
        else:
            content = b""
        found[str(path.relative_to(folder))] = f"{st.st_mode:o} {hashlib.sha256(content).hexdigest()}"
    return found


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(
        [f"changed {name}" for name in before.keys() & after.keys() if before[name] != after[name]]
        + [f"removed {name}" for name in before.keys() - after.keys()]
        + [f"added {name}" for name in after.keys() - before.keys()]
    )


class Sandbox:
    """The session's temporary directory and the state of /etc/postfix at its start."""

    def __init__(self) -> None:
        self.saved_tempdir = tempfile.tempdir
        self.saved_env = os.environ.get("TMPDIR")
        self.root = Path(tempfile.mkdtemp(prefix="lmtpd-t-"))
        self.root.chmod(0o755)  # Postfix's daemons run as postfix and look inside
        tempfile.tempdir = str(self.root)
        os.environ["TMPDIR"] = str(self.root)  # lmtpd processes and tools started by the tests too
        self.postfix = fingerprint()

    def problems(self) -> list[str]:
        """What the session changed on the machine; empty if nothing."""
        found = [f"/etc/postfix: {c}" for c in changes(self.postfix, fingerprint())]
        left = [p.name for p in self.root.iterdir() if not p.name.startswith("pytest-of-")]
        found += [f"left behind in the session's temporary directory: {name}" for name in sorted(left)]
        return found

    def close(self) -> None:
        tempfile.tempdir = self.saved_tempdir
        if self.saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = self.saved_env
        shutil.rmtree(self.root, ignore_errors=True)
