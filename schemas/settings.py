"""The one frozen settings object (env prefix TRAJLAKE_), built in entry points and passed down."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Mapping

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


TOPICS = ("frontend.raw", "agent.raw", "events.clean", "deadletter", "steps", "episodes")
# What the worker writes may be larger than what it read: a dead letter carries its raw record in base64
# (x4/3), a step row an action's output and its reaction's final value. The raw topics keep the broker's
# default limit (~1 MiB, the intake limit); the worker's output topics, its join changelog and its producer
# and consumers allow this much, so any record the broker accepted can be dead-lettered or passed on.
WORKER_OUTPUT_TOPICS = ("events.clean", "deadletter", "steps", "episodes")
OUTPUT_MESSAGE_MAX_BYTES = 16 * 1024 * 1024


class Settings(BaseSettings):
    """Everything a trajlake process can be configured with.

    Lives in schemas/ because every part reads it and schemas/ is the leaf of the import graph.
    Nested values come from env as JSON (e.g. TRAJLAKE_SPARK_CONF='{"spark.executor.memory":"4g"}').
    """

    model_config = SettingsConfigDict(env_prefix="TRAJLAKE_", frozen=True, extra="forbid")

    # where everything generated lives: broker jars, broker data, logs, the lake (git-ignored)
    state_dir: Path = Path(".trajlake")
    # lake root; defaults to <state_dir>/lake. A local path: the sinks, jobs and readers are set up for local files
    lake_root: Path | None = None

    # Kafka
    kafka_host: str = "127.0.0.1"
    # a TCP port: out of range, sockets raised OverflowError deep in the broker check (found in review)
    kafka_port: int = Field(default=9092, ge=1, le=65535)
    kafka_controller_port: int = Field(default=9093, ge=1, le=65535)
    kafka_bootstrap: str | None = None  # an external cluster; when set, `trajlake up` starts nothing

    @field_validator("kafka_bootstrap")
    @classmethod
    def _host_ports(cls, v: str | None) -> str | None:
        for server in (v or "").split(",") if v is not None else ():
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{server.strip()!r} is not HOST:PORT; write e.g. kafka-1:9092,kafka-2:9092")
        return v

    @field_validator("state_dir", "lake_root", "key_store", "pii_ground_truth", "schedule_file", mode="before")
    @classmethod
    def _not_empty_path(cls, v):
        # an empty TRAJLAKE_LAKE_ROOT= was the current directory: the lake, or the keys, in whatever directory a
        # command ran from (found in review)
        if isinstance(v, str) and not v.strip():
            raise ValueError("is empty: unset it for the default, or give a path")
        return v
    kafka_heap: str = "512m"
    topic_partitions: int = Field(default=4, ge=1)
    topic_prefix: str = "tl."

    # Spark
    spark_master: str = "local[*]"
    spark_conf: dict[str, str] = Field(default_factory=dict)
    spark_ui: bool = True

    # privacy: the pseudonymization key never reaches the lake
    pseudonym_key: SecretStr = SecretStr("trajlake-dev-key-change-me")
    # per-user keys for crypto-shredding (privacy/keystore.py); defaults to <state_dir>/keys/user-keys.sqlite3 and
    # must lie outside the lake, so nothing that copies the lake copies the keys
    key_store: Path | None = None
    # a worker re-reads a cached user key after this long, so an erased user's key leaves its memory too
    key_cache_seconds: float = Field(default=300, ge=0)

    # stream worker
    worker_id: str = "trajlake"
    # how long the broker waits for a silent worker before giving its partitions to another (a crashed worker's
    # partitions are idle this long). Scrubbing runs off the event loop, so heartbeats are not starved.
    consumer_session_timeout_seconds: float = Field(default=30.0, ge=6.0)
    # a sink's micro-batch: up to this many records or this long, and one Delta commit per this many bytes of
    # record values at most (a batch of large records is committed in parts: no single write grows with it)
    sink_max_records: int = Field(default=5000, ge=1)
    sink_max_seconds: float = Field(default=2.0, gt=0)
    sink_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    # the sinks drop a row whose key they wrote this recently: a record ingest passed twice (a crash between its
    # send and its ack, or a resend it had not yet seen in bronze/events)
    dedup_window_seconds: int = Field(default=3600, ge=1)
    # ingest drops an event whose id bronze/events holds for its date, however late the resend: it re-reads the
    # table's new files this often, and holds at most this many ids (16 bytes each; least recent dates go first)
    dedup_refresh_seconds: float = Field(default=5.0, gt=0)
    dedup_max_keys: int = Field(default=20_000_000, ge=1)
    # terms always redacted from free text (internal project names, a customer's brand…): a JSON list
    scrub_deny_terms: tuple[str, ...] = ()
    # a scrub batch that takes longer is retried event by event; an event that alone takes longer (or kills the
    # scrubbing process) is dead-lettered as scrub_failed, and the pool restarted (streams/scrubbing.py)
    scrub_timeout_seconds: float = Field(default=120, gt=0)
    # processes scrubbing at once, each with its own copy of the NER model (~250 MB); each owns a share of the
    # sessions (streams/scrubbing.py). On 2 cores two drained 1.02-1.18x faster than one (bench/RESULTS.md)
    scrub_processes: int = Field(default=2, ge=1)
    # the worker compacts the sink tables' closed date partitions this often (0 = never; `trajlake compact`)
    compact_interval_seconds: float = Field(default=900, ge=0)
    compact_min_files: int = Field(default=16, ge=2)
    # `trajlake vacuum` deletes the files that versions older than this replaced (Delta's default, 7 days): a
    # reader pinned to an older version (a rebuilt export, a notebook) can no longer read it
    vacuum_retention_hours: float = Field(default=168, ge=0)
    # fault injection for crash tests: the sink exits hard right after its Nth Delta commit, before Kafka
    # offsets are committed (the window exactly-once must survive). Never set in production.
    crash_after_commits: int | None = None
    # fault injection: the join exits hard after its Nth state save, before the staged rows are delivered
    crash_after_join_saves: int | None = None
    # fault injection: "<raw topic>:<partition>:<offset>" (e.g. "agent.raw:1:2"): the consumer passes that record
    # once without handing it to the streams, as Faust's buffer clearing did (docs/design.md, trap 6)
    lose_record_once: str | None = Field(default=None, pattern=r"^(agent|frontend)\.raw:\d+:\d+$")
    step_timeout_seconds: float = Field(default=600, gt=0)
    episode_timeout_seconds: float = Field(default=1800, gt=0)
    # after a user's terminal task event, wait this long for the agent's task_ended before closing the episode
    episode_grace_seconds: float = Field(default=30, ge=0)
    # a closed session's events are kept this long for late amendments, then forgotten (bounded state)
    join_retention_seconds: float = Field(default=3600, gt=0)
    join_tick_seconds: float = Field(default=1.0, gt=0)
    # the events one session keeps in the join (its texts, mostly) may take this many bytes; an event beyond it
    # is dead-lettered (session_state_full). A session's state, with the rows it stages, is one changelog
    # record, so the cap stays well under OUTPUT_MESSAGE_MAX_BYTES.
    join_state_max_bytes: int = Field(default=4 * 1024 * 1024, ge=4096, le=OUTPUT_MESSAGE_MAX_BYTES // 3)

    # jobs: the reward spec to score with (None = the newest schemas/reward/reward-vN.toml)
    reward_version: str | None = None
    # an episode's steps may fall on the days around it; jobs read this many days either side of their window
    job_margin_days: int = Field(default=1, ge=0)
    # a job that computes no rows for a window holding published rows refuses to publish (EmptyPublishRefused), as
    # does one that computes none for a day of its window holding published rows (EmptyDaysRefused): that is almost
    # always missing input, and the overwrite would delete the rows. True empties such windows and days
    # (`trajlake jobs run --allow-empty` sets it for one run); meant for one deliberate run, not a standing setting
    job_allow_empty: bool = False
    # the Data Docs index lists this many of the newest validation runs (every run's own page and stored result
    # stay). Unbounded, each gate re-read every result ever stored to rebuild the index: ~3 ms per stored run,
    # and a daily schedule stores five per job run
    quality_docs_runs: int = Field(default=100, ge=1)

    # training exports (jobs/export.py): groups are split by a keyed hash of this key, never by the row
    export_group_by: Literal["user", "task", "session"] = "user"
    export_ratios: dict[str, float] = Field(default_factory=lambda: {"train": 0.8, "validation": 0.1, "test": 0.1})
    # this share of groups goes to the frozen holdout; once a group is there it stays (exports/holdout_registry)
    export_holdout_share: float = Field(default=0.05, ge=0, lt=1)
    # changing the salt reshuffles every split: a deliberate, recorded act (it is in every manifest)
    export_split_salt: str = "trajlake-splits-1"
    # prompts at least this similar (MinHash estimate of word-3-gram Jaccard) are near duplicates
    export_near_duplicate_threshold: float = Field(default=0.8, gt=0, le=1)
    # processes that format export rows (0: one per CPU)
    export_workers: int = Field(default=0, ge=0)
    # a customer database whose values must never appear in an export (e.g. τ-bench's airline-users.json);
    # the export's PII scan always runs its pattern detectors, and also this ground truth when it is set
    pii_ground_truth: Path | None = None

    # collector (streams/collector/): the HTTP front door for browsers, SDKs and OpenTelemetry exporters
    collector_host: str = "127.0.0.1"
    collector_port: int = Field(default=8787, ge=1, le=65535)
    # write keys per app, as JSON: {"helpdesk-web": "wk_…"}. A key names its app; events are stamped with it.
    # Browser keys are public by nature (like any analytics write key): they only allow writing events.
    collector_write_keys: dict[str, SecretStr] = Field(default_factory=dict)
    # origins allowed to call the collector from a browser (CORS), as a JSON list; empty = none
    collector_cors_origins: tuple[str, ...] = ()
    # a request body above this is refused whole (413); one event above collector_max_event_bytes is rejected
    collector_max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # /v1/traces: an OpenTelemetry exporter sends up to 512 spans with their messages, and never retries a 413
    collector_max_otlp_body_bytes: int = Field(default=16 * 1_048_576, ge=1024)
    collector_max_event_bytes: int = Field(default=262_144, ge=256)
    collector_max_batch_events: int = Field(default=500, ge=1)
    # per write key: a token bucket of `burst` events refilled at `rate` events/s; over it → 429 + Retry-After
    collector_rate_per_second: float = Field(default=500.0, gt=0)
    collector_rate_burst: int = Field(default=5000, ge=1)
    # OTLP spans carry no contract dimensions of their own: these fill the ones their attributes lack
    otlp_default_prompt_variant: str = "default"
    otlp_default_user_id: str = "otel-anonymous"

    # the job schedule `trajlake schedule` and the Airflow DAG (infra/airflow/) both read; None: infra/schedule.toml
    # of this checkout. Run history and locks live in <state_dir>/schedule/
    schedule_file: Path | None = None

    @model_validator(mode="after")
    def _ratios(self) -> "Settings":
        if set(self.export_ratios) != {"train", "validation", "test"} or \
                abs(sum(self.export_ratios.values()) - 1) > 1e-9 or min(self.export_ratios.values()) < 0:
            raise ValueError("TRAJLAKE_EXPORT_RATIOS must give train, validation and test shares that sum to 1, "
                             f"e.g. {{\"train\": 0.8, \"validation\": 0.1, \"test\": 0.1}}; got {self.export_ratios}")
        return self

    @property
    def lake(self) -> Path:
        return (self.lake_root or self.state_dir / "lake").resolve()

    @property
    def key_store_path(self) -> Path:
        return (self.key_store or self.state_dir / "keys" / "user-keys.sqlite3").resolve()

    @model_validator(mode="after")
    def _keys_outside_the_lake(self) -> "Settings":
        if self.key_store_path.is_relative_to(self.lake):
            raise ValueError(f"the key store {self.key_store_path} is inside the lake {self.lake}; "
                             "put TRAJLAKE_KEY_STORE outside it")
        return self

    @property
    def schedule_path(self) -> Path:
        return (self.schedule_file or Path(__file__).resolve().parent.parent / "infra" / "schedule.toml").resolve()

    @property
    def bootstrap(self) -> str:
        return self.kafka_bootstrap or f"{self.kafka_host}:{self.kafka_port}"

    @property
    def uses_local_broker(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def sink_group(self) -> str:
        """The Kafka consumer group of the worker's Delta sinks (their own consumer, beside Faust's group)."""
        return f"{self.worker_id}-sinks"

    def topic(self, name: str) -> str:
        """Full topic name for a logical one: frontend.raw, agent.raw, events.clean, deadletter, steps, episodes."""
        return f"{self.topic_prefix}{name}"

    @property
    def topics(self) -> list[str]:
        return [self.topic(t) for t in TOPICS]


def settings_env(settings: Settings, base: Mapping[str, str] = {}) -> dict[str, str]:
    """The environment that rebuilds `settings` in a child process (the way a deployment passes them):
    `base` without its TRAJLAKE_ variables, plus one TRAJLAKE_ variable per set field."""
    env = {k: v for k, v in base.items() if not k.startswith("TRAJLAKE_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, (dict, list, tuple)):  # secrets inside (the collector's write keys) are unwrapped
            value = json.dumps(value, default=lambda v: v.get_secret_value())
        env[f"TRAJLAKE_{name.upper()}"] = str(value)
    return env
