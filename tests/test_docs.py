"""The documentation promises what CI does."""

from __future__ import annotations

import re

from .helpers.club import REPO


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.rst").read_text()
    blocks = re.findall(r"::\n\n    (.+)\n", readme)
    test_command = next(cmd for cmd in blocks if "pytest" in cmd)
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines
    steps = [step.strip() for step in test_command.split("&&")]
    assert steps.index("ruff check .") < steps.index("python -m pytest")  # style first, as CI does
    assert steps.index("ruff format --check .") < steps.index("python -m pytest")


def test_example_config_is_valid():
    from lmtpd.config import load

    cfg = load(REPO / "examples" / "lmtpd.toml")
    assert cfg.domain == "myclub.org"
    assert str(cfg.lmtp.listen) == "127.0.0.1:8024"
