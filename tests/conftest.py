"""Session fixtures: one real Kafka broker and one SparkSession per test run, on private ports and a private state dir."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from schemas.settings import Settings

REPO = Path(__file__).resolve().parent.parent
TAU = REPO.parent / "shared" / "data" / "tau-bench"
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")


def free_port() -> int:
    """A free port below the ephemeral range: a client retrying a dead broker on an ephemeral port can end up
    connected to itself (TCP self-connect) and hold the port the broker must bind again after a restart."""
    low, _ = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    rng = __import__("random").Random()
    for _ in range(200):
        port = rng.randrange(20000, min(low, 32768) - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that rebuilds `settings` in a child process (the way a real deployment passes them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAJLAKE_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, (dict, list, tuple)):
            import json

            value = json.dumps(value)
        env[f"TRAJLAKE_{name.upper()}"] = str(value)
    return env


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trajlake-state")


@pytest.fixture(scope="session")
def base_settings(state_dir: Path) -> Settings:
    """Settings for this test run: private broker ports, private state, no Spark UI."""
    return Settings(state_dir=state_dir, kafka_port=free_port(), kafka_controller_port=free_port(),
                    spark_ui=False, topic_partitions=3, sink_max_seconds=0.5,
                    consumer_session_timeout_seconds=8)


@pytest.fixture(scope="session")
def kafka(base_settings: Settings):
    """A real Apache Kafka 4.x broker (KRaft), started once for the whole test session."""
    from infra.kafka import broker

    broker.start(base_settings)
    broker.ensure_topics(base_settings)
    yield base_settings
    broker.stop(base_settings)


@pytest.fixture(scope="session")
def spark(base_settings: Settings):
    """One SparkSession with Delta for the whole test session."""
    from jobs.spark import build_spark

    session = build_spark(base_settings, app_name="trajlake-tests")
    yield session
    session.stop()


@pytest.fixture
def lake_settings(base_settings: Settings, tmp_path: Path) -> Settings:
    """Base settings with a lake of this test's own."""
    return base_settings.model_copy(update={"lake_root": tmp_path / "lake"})


class WorkerProcess:
    """`trajlake worker` as a child process, as a deployment runs it."""

    def __init__(self, settings: Settings, log: Path, *args: str):
        self.settings, self.log, self.args = settings, log, args
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "trajlake.cli", "worker", "--loglevel", "info", *self.args],
                                     env=settings_env(self.settings), stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=REPO)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_for(self, predicate, timeout: float, message: str):
        """Wait for `predicate`, failing at once (with the worker's log) if the worker dies first."""
        def check():
            if not self.alive():
                tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
                raise AssertionError(f"the worker exited ({self.proc.returncode}) while waiting for {message}:\n{tail}")
            return predicate()
        try:
            return wait_until(check, timeout, message=message)
        except AssertionError as e:
            if "timed out" not in str(e):
                raise
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-60:])
            raise AssertionError(f"{e}; the worker's log ends:\n{tail}") from None


def wait_until(predicate, timeout: float, interval: float = 0.5, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")
