"""Collector fixtures: `trajlake collect` as a child process on its own port and topics, and a small HTTP client."""
from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
from pydantic import SecretStr
from kafka import KafkaConsumer, TopicPartition

from infra.kafka.broker import free_port
from schemas.settings import Settings
from tests.conftest import REPO, own_settings, settings_env, wait_until

KEY, OTHER_KEY = "wk_test_helpdesk_0123456789", "wk_test_agent_0123456789"


class CollectorProcess:
    """`trajlake collect` as a deployment runs it."""

    def __init__(self, settings: Settings, log: Path):
        self.settings, self.log = settings, log
        self.url = f"http://{settings.collector_host}:{settings.collector_port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "CollectorProcess":
        self.proc = subprocess.Popen([sys.executable, "-m", "trajlake.cli", "collect"], env=settings_env(self.settings),
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=REPO)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"the collector exited: {self.log.read_text()[-2000:]}")
            try:
                return request(self.url + "/ready")[0] == 200
            except OSError:
                return False
        wait_until(up, 60, 0.2, message="the collector to be ready")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def request(url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            method: str | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one HTTP request; error statuses are answers, not exceptions."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def post_events(c: CollectorProcess, events, key: str | None = KEY, headers: dict[str, str] | None = None,
                raw: bytes | None = None) -> tuple[int, dict, dict]:
    h = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    status, hdrs, body = request(c.url + "/v1/events", raw if raw is not None else orjson.dumps(events), h, "POST")
    return status, hdrs, orjson.loads(body) if body else {}


def topic_counts(s: Settings, *names: str) -> dict[str, int]:
    """Messages in each logical topic (end offsets summed over partitions)."""
    consumer = KafkaConsumer(bootstrap_servers=s.bootstrap)
    try:
        out = {}
        for name in names:
            parts = consumer.partitions_for_topic(s.topic(name)) or set()
            ends = consumer.end_offsets([TopicPartition(s.topic(name), p) for p in parts])
            out[name] = sum(ends.values())
        return out
    finally:
        consumer.close()


def collector_settings(kafka: Settings, tmp: Path, **update) -> Settings:
    s = own_settings(kafka, tmp, "c")
    return s.model_copy(update={"collector_port": free_port((kafka.kafka_port, kafka.kafka_controller_port)),
                                "collector_write_keys": {"helpdesk-web": SecretStr(KEY),
                                                         "support-agent": SecretStr(OTHER_KEY)},
                                **update})


@pytest.fixture
def collector(kafka, tmp_path):
    """A collector with its own topics on the shared broker; yields the process (its .settings, .url)."""
    s = collector_settings(kafka, tmp_path)
    c = CollectorProcess(s, tmp_path / "collector.log").start()
    yield c
    c.stop()
