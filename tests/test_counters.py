"""Event counters (lmtpd.counters): scraped from serve's endpoint after real traffic, parsed
with the Prometheus client's parser. The counters live as long as the test process, so
each test compares a scrape before with one after."""

from __future__ import annotations

import asyncio
import socket
import tempfile
import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lmtpd import counters, metrics
from lmtpd.config import load

from .helpers import lmtpclient
from .helpers.club import lmtp_target, message, populate, running, write_config
from .helpers.policyclient import ask, connect, request
from .helpers.processes import serving
from .helpers.sink import Sink
from .helpers.timing import Clock, eventually

Samples = dict[tuple[str, tuple], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse(text: str) -> Samples:
    """{(sample name, sorted label pairs): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        return parse(resp.read().decode())


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_replies_decisions_relay_and_commits_are_counted(short_dir: Path, sink: Sink, clock: Clock):
    port = free_port()
    extra = f'[policy]\nlisten = "unix:{short_dir}/policy.sock"\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
    cfg = load(write_config(short_dir, f"unix:{short_dir}/lmtpd.sock", sink.port, extra=extra))
    await populate(cfg)
    sink.rcpt_replies = {"bob@example.net": "451 4.2.0 try later"}
    url = f"http://127.0.0.1:{port}/metrics"
    async with running(cfg, clock):
        before = await asyncio.to_thread(scrape, url)
        r, w = await connect(cfg)
        assert await ask(r, w, request(sender="anna@example.net", recipient="youth@myclub.org")) == "DUNNO"
        refused = await ask(r, w, request(sender="stranger@example.org", recipient="youth@myclub.org"))
        assert refused.startswith("550")
        w.close()
        target = lmtp_target(cfg)
        t = await lmtpclient.send(target, "anna@example.net", ["youth@myclub.org", "chess@myclub.org"], message())
        assert t.data == [t.data[0]] and t.data[0].startswith("250")
        await sink.wait_for(2)
        after = await asyncio.to_thread(scrape, url)

    assert delta(before, after, "lmtpd_policy_decisions_total", action="dunno") == 1
    assert delta(before, after, "lmtpd_policy_decisions_total", action="reject") == 1
    assert delta(before, after, "lmtpd_lmtp_replies_total", stage="mail", code_class="2xx") == 1
    assert delta(before, after, "lmtpd_lmtp_replies_total", stage="rcpt", code_class="2xx") == 1
    assert delta(before, after, "lmtpd_lmtp_replies_total", stage="rcpt", code_class="5xx") == 1  # chess: no list
    assert delta(before, after, "lmtpd_lmtp_replies_total", stage="data", code_class="2xx") == 1
    assert delta(before, after, "lmtpd_relay_attempts_total", outcome="sent", destination="smarthost") == 2
    assert delta(before, after, "lmtpd_relay_attempts_total", outcome="deferred", destination="smarthost") == 1
    assert delta(before, after, "lmtpd_relay_duration_seconds_count", destination="smarthost") == 3
    assert delta(before, after, "lmtpd_relay_duration_seconds_bucket", destination="smarthost", le="+Inf") == 3
    assert delta(before, after, "lmtpd_db_commit_duration_seconds_count") >= 1
    assert "@" not in "".join(str(labels) for _, labels in after)
    assert not any("example" in str(labels) or "myclub" in str(labels) for _, labels in after)


def serve_registry(worker_file: Path) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(metrics.EventCollector(worker_file))
    return reg


def test_the_worker_file_adds_to_serve_s_own_counters(tmp_path: Path):
    """serve's scrape = its own counters + the delivery process's textfile, one family per name."""
    counters.RELAY_ATTEMPTS.labels("sent", "mx").inc(3)
    counters.POLICY_DECISIONS.labels("dunno").inc()
    worker_file = tmp_path / "delivery.prom"
    counters.write_worker_file(worker_file)  # as if the worker process had counted the same
    assert oct(worker_file.stat().st_mode & 0o777) == "0o600"
    own = parse(generate_latest(counters.REGISTRY).decode())
    text = generate_latest(serve_registry(worker_file)).decode()
    merged = parse(text)
    key = ("lmtpd_relay_attempts_total", (("destination", "mx"), ("outcome", "sent")))
    assert merged[key] == 2 * own[key]
    assert text.count("# TYPE lmtpd_relay_attempts_total counter") == 1
    assert "_created" not in text  # start times of two processes: no sum of them means anything
    # no file yet (the worker has not written it): serve's own figures alone
    alone = parse(generate_latest(serve_registry(tmp_path / "missing.prom")).decode())
    assert alone[key] == own[key]


def test_code_classes_and_policy_actions():
    assert [counters.code_class(r) for r in ("250 ok", "451 4.3.0 x", "550 5.1.1 x", "", "x")] == [
        "2xx", "4xx", "5xx", "other", "other",
    ]  # fmt: skip
    actions = ("DUNNO", "450 4.7.0 TLS", "550 5.7.1 no", "DEFER_IF_PERMIT x", "HOLD", "PREPEND X-A: 1")
    assert [counters.policy_action(a) for a in actions] == ["dunno", "defer", "reject", "other", "hold", "prepend"]


def worker_directories() -> list[Path]:
    """serve's private directories holding a delivery worker's counters."""
    return [p for p in Path(tempfile.gettempdir()).glob("lmtpd-metrics-*") if (p / "delivery.prom").exists()]


async def test_serve_adds_the_delivery_process_s_counters(short_dir: Path, sink: Sink):
    """`lmtpd serve` as a process: its worker relays in a child, whose counters reach the scrape."""
    port = free_port()
    extra = f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    config = write_config(short_dir, f"unix:{short_dir}/lmtpd.sock", sink.port, extra=extra)
    cfg = load(config)
    await populate(cfg)
    url = f"http://127.0.0.1:{port}/metrics"
    async with serving(config) as proc:
        t = await lmtpclient.send(lmtp_target(cfg), "anna@example.net", ["youth@myclub.org"], message())
        assert t.data[0].startswith("250")
        await sink.wait_for(3)
        key = ("lmtpd_relay_attempts_total", (("destination", "smarthost"), ("outcome", "sent")))

        def relayed() -> bool:
            return scrape(url).get(key) == 3

        await eventually(lambda: relayed(), seconds=20, what="the worker's counters in serve's scrape")
        after = await asyncio.to_thread(scrape, url)
        assert after[("lmtpd_lmtp_replies_total", (("code_class", "2xx"), ("stage", "data")))] == 1  # serve's own
        private = worker_directories()
        assert private and all(oct(p.stat().st_mode & 0o777) == "0o700" for p in private)
        assert proc.returncode is None
    assert not any(p.exists() for p in private)  # serve removed its private directory
