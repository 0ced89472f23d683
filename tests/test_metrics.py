"""Metrics (lmtpd.metrics): serve's endpoint scraped and parsed with the Prometheus client's parser."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from lmtpd.config import Config, MetricsConfig

from .helpers import lmtpclient
from .helpers.club import lmtp_target, message, running
from .helpers.sink import Sink
from .helpers.timing import Clock, eventually


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse(text: str) -> dict[str, dict[tuple, float]]:
    """{metric name: {sorted label pairs: value}}."""
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        return resp.read().decode()


async def test_the_endpoint_reports_the_queue_and_never_an_address(club_config: Config, sink: Sink, clock: Clock):
    port = free_port()
    cfg = dataclasses.replace(club_config, metrics=MetricsConfig(listen=f"127.0.0.1:{port}"))
    sink.rcpt_replies = {"bob@example.net": "451 4.2.0 try later"}
    async with running(cfg, clock):
        t = await lmtpclient.send(lmtp_target(cfg), "anna@example.net", ["youth@myclub.org"], message())
        assert t.data[0].startswith("250")
        await sink.wait_for(2)
        clock.advance(120)
        url = f"http://127.0.0.1:{port}/metrics"
        text = await asyncio.to_thread(scrape, url)
        metrics = parse(text)
    assert metrics["lmtpd_queue_depth"][()] == 1
    assert metrics["lmtpd_queue_copies"][(("kind", "list"), ("state", "sent"))] == 2
    assert metrics["lmtpd_queue_copies"][(("kind", "list"), ("state", "pending"))] == 1
    assert metrics["lmtpd_queue_oldest_copy_age_seconds"][()] == 120
    assert metrics["lmtpd_queue_deferred_copies"][(("reply", "451"),)] == 1
    assert metrics["lmtpd_posts_last_day"][(("list", "youth"),)] == 1
    assert "@" not in "".join(str(labels) for samples in metrics.values() for labels in samples)
    # stopped with serve: the port is free again
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the scrape's connection may be in TIME_WAIT
        s.bind(("127.0.0.1", port))
        s.listen()


async def test_the_textfile_for_node_exporter(club_config: Config, clock: Clock, tmp_path: Path):
    path = tmp_path / "lmtpd.prom"
    cfg = dataclasses.replace(club_config, metrics=MetricsConfig(textfile=path, interval=1))
    async with running(cfg, clock):
        await eventually(path.exists, what="the textfile")
    metrics = parse(path.read_text())
    assert metrics["lmtpd_queue_depth"][()] == 0
    assert metrics["lmtpd_members_delivery_disabled"][()] == 0
    assert oct(path.stat().st_mode & 0o777) == "0o644"
