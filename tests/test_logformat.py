"""The JSON log format: one object per line, with the queue id when the line has one."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path

from lmtpd.config import load
from lmtpd.logformat import JsonFormatter, queue_id_of
from lmtpd.runtime import open_runtime

from .helpers.club import message, populate, write_config
from .helpers.processes import spawn_lmtpd
from .helpers.timing import Clock


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("lmtpd.delivery", logging.WARNING, __file__, 1, msg, args, info)


def test_one_object_per_line_with_the_queue_id():
    line = JsonFormatter().format(record("%s: to=<%s>, status=deferred (%s)", "3F9A0C1B22D4", "bob@example.net", "x"))
    entry = json.loads(line)
    assert entry["queue_id"] == "3F9A0C1B22D4" and entry["level"] == "warning" and entry["logger"] == "lmtpd.delivery"
    assert entry["message"] == "3F9A0C1B22D4: to=<bob@example.net>, status=deferred (x)"
    assert entry["time"].endswith("+00:00")
    assert "queue_id" not in json.loads(JsonFormatter().format(record("lmtpd listening on %s", "unix:/x")))
    crafted = JsonFormatter().format(record("reply: %s", "450 x\r\nfake: line\n", exc=True))
    assert "\n" not in crafted and "\r" not in crafted  # an outsider's CR/LF never starts a line of its own
    assert "ValueError: boom" in json.loads(crafted)["exception"]
    assert queue_id_of("policy: NOQUEUE: from=<a@example.org>") is None


async def test_log_json_on_the_command_line_and_in_the_configuration(tmp_path: Path):
    config = write_config(tmp_path, "127.0.0.1:8024", relay_port=1, extra='[logging]\nformat = "json"\n')
    cfg = load(config)
    assert cfg.logging.format == "json"
    await populate(cfg)
    async with open_runtime(cfg, Clock(time.time())) as runtime:
        replies = await runtime.ingest().decide("anna@example.net", ["youth@myclub.org"], message())
    queue_id = replies[0].split()[3]
    for args in (("-v", "queue", "flush"), ("--log-json", "-v", "queue", "flush")):
        if args[0] == "--log-json":  # the same, told on the command line
            write_config(tmp_path, "127.0.0.1:8024", relay_port=1)
            assert load(config).logging.format == "text"
        proc = await spawn_lmtpd(config, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 75
        logged = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
        deferred = [e for e in logged if "status=deferred" in e["message"]]
        assert len(deferred) == 3 and {e["queue_id"] for e in deferred} == {queue_id}
        assert all(set(e) >= {"time", "level", "logger", "message"} for e in logged)
