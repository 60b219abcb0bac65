"""Session fixtures: one real Kafka broker and one SparkSession per test run, on private ports and a private state dir."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from infra.kafka import broker
from infra.kafka.broker import free_port
from schemas.settings import Settings
from schemas.settings import settings_env as _settings_env

REPO = Path(__file__).resolve().parent.parent
TAU = REPO.parent / "shared" / "data" / "tau-bench"
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that rebuilds `settings` in a `trajlake` child process."""
    return _settings_env(settings, os.environ)


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trajlake-state")


@pytest.fixture(scope="session")
def base_settings(state_dir: Path) -> Settings:
    """Settings for this test run: private broker ports, private state, no Spark UI."""
    port = free_port()
    return Settings(state_dir=state_dir, kafka_port=port, kafka_controller_port=free_port((port,)),
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


def own_settings(kafka: Settings, tmp: Path, letter: str = "t") -> Settings:
    """Settings with topics, consumer group, lake and state of their own on the shared broker (topics created)."""
    tag = uuid.uuid4().hex[:6]
    s = kafka.model_copy(update={"topic_prefix": f"{letter}{tag}.", "worker_id": f"w{tag}", "lake_root": tmp / "lake",
                                 "state_dir": tmp / "state"})
    broker.ensure_topics(s)
    return s


@pytest.fixture(scope="session")
def tau_lake(kafka, tmp_path_factory):
    """All 200 τ-bench trajectories through the real worker, Presidio NER on (the production configuration),
    once per test session: the join tests and the leak test read the same lake."""
    from lake.readers import read_table
    from schemas.tables import BRONZE_EVENTS, SILVER_EPISODES
    from streams.producer import produce
    from streams.recompute import check_parity
    from streams.sources.tau_bench import load_trajectories, replay_events

    tmp = tmp_path_factory.mktemp("tau-lake")
    s = own_settings(kafka, tmp)
    records = load_trajectories(TAU / "gpt-4o-airline.json")
    events = list(replay_events(records))
    produce(s, events)
    w = WorkerProcess(s, tmp / "worker.log").start()
    try:
        w.wait_for(lambda: read_table(s, SILVER_EPISODES, columns=["episode_id"]).num_rows >= len(records)
                   and read_table(s, BRONZE_EVENTS, columns=["event_id"]).num_rows >= len(events),
                   600, message="200 episodes in silver")
        # the last late amendments may still be on their way: wait until the lake agrees with bronze
        w.wait_for(lambda: check_parity(s).ok, 120, message="silver to settle")
    finally:
        w.stop()
    return s, records, events


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

    def sink_pids(self) -> list[int]:
        """The pids of the sink processes this log shows started (streams/sink_process.py logs its start)."""
        import re

        return [int(m) for m in re.findall(r"\[(\d+)\] \[INFO\] \[sinks\] sink process started",
                                            self.log.read_text(errors="replace"))]

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


def process_gone(pid: int) -> bool:
    """No such process, or only its zombie (an orphan's exit, not yet reaped by the container's init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_until(predicate, timeout: float, interval: float = 0.5, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")
