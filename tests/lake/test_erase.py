"""Erase, proven by a file scan: after `trajlake erase`, no file under the lake holds the user's raw id or pseudonym."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import date

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake
from deltalake.exceptions import CommitFailedError

from lake.duckdb_views import connect
from lake.erase import Target, _retrying, erase_user
from lake.readers import read_table
from lake.tables import ensure_table, table_path
from privacy import POLICY_VERSION
from privacy.erase import subject_digest, subject_for
from privacy.keystore import KeyStore
from privacy.scrub import EventScrubber
from privacy.tokens import reveal
from privacy.worker import scrub_batch
from schemas.settings import Settings
from schemas.tables import AUDIT_ERASURES, BRONZE_DEADLETTER, BRONZE_EVENTS, GOLD_REVIEW_QUEUE, SILVER_EPISODES, \
    SILVER_STEPS
from streams.ingest import DeadLetter, SourceRecord, clean_event, clean_record, now_iso
from streams.join import batch_join
from streams.sink import SINK_TARGETS, DeltaSinkWriter, Record, count_present
from streams.sources.tau_bench import load_trajectories, replay_events
from tests.conftest import REPO, TAU, settings_env

pytestmark = pytest.mark.component

ERASED = "omar_rossi_1241"  # two sessions in the first six τ-bench trajectories
USER_TABLES = (BRONZE_EVENTS, SILVER_STEPS, SILVER_EPISODES)


@pytest.fixture
def s(base_settings: Settings, tmp_path) -> Settings:
    return base_settings.model_copy(update={"state_dir": tmp_path / "state", "lake_root": tmp_path / "lake"})


def _key(s: Settings) -> bytes:
    return s.pseudonym_key.get_secret_value().encode()


def build_lake(s: Settings, trajectories: int = 6) -> list[dict]:
    """Six τ-bench trajectories (five users) through the real scrub, sink and join code, without the broker, plus
    dead letters, a per-episode gold table without user_id, and exports (a Delta table and a JSON Lines file)."""
    raw = [e.event for e in replay_events(load_trajectories(TAU / "gpt-4o-airline.json"), trajectories)]
    items, _ = scrub_batch(EventScrubber(_key(s), use_ner=False), KeyStore(s.key_store_path), raw, {})
    values = [clean_record(it["event"], SourceRecord("tl.agent.raw", 0, i, None, b""), now_iso(),
                           it["policy_version"], it["user_ref"]) for i, it in enumerate(items)]
    sink = DeltaSinkWriter(s, SINK_TARGETS["events.clean"], "g")
    half = len(values) // 2  # two commits, so the user is in more than one commit of the log
    sink.commit([Record("tl.events.clean", 0, i, v) for i, v in enumerate(values[:half])])
    sink.commit([Record("tl.events.clean", 0, half + i, v) for i, v in enumerate(values[half:])])

    first = {e["user_id"]: e for e in reversed(raw)}  # one rejected event per user, with its raw bytes
    dls = [DeadLetter("schema_violation", "validate", "x", None, "tl.agent.raw", 1, o, orjson.dumps(v), b"k", now_iso())
           for o, v in enumerate(first.values())]
    dls.append(DeadLetter("invalid_json", "parse", "x", None, "tl.frontend.raw", 1, len(dls),
                          f'{{"user_id": "{ERASED}", broken'.encode(), None, now_iso()))
    DeltaSinkWriter(s, SINK_TARGETS["deadletter"], "g").commit(
        [Record("tl.deadletter", 0, i, d.to_json()) for i, d in enumerate(dls)])

    steps, episodes = batch_join([clean_event(v) for v in values])
    for topic, rows in (("steps", steps), ("episodes", episodes)):
        recs = [Record(f"tl.{topic}", 0, i, orjson.dumps({**r, "revision": 0, "closed_reason": "terminal",
                                                           "closed_at": time.time()})) for i, r in enumerate(rows)]
        DeltaSinkWriter(s, SINK_TARGETS[topic], "g").commit(recs)

    review = [{"episode_id": e["episode_id"], "week": date(2024, 5, 13), "agent_version": e["agent_version"],
               "prompt_variant": e["prompt_variant"], "task_type": e["task_type"] or "unknown", "band": "[0, 1)",
               "outcome": e["outcome"], "composite": 0.5, "rank": i, "stratum_size": 6, "weight": 1.0,
               "reward_version": "reward-v1"} for i, e in enumerate(episodes)]
    write_deltalake(ensure_table(s, GOLD_REVIEW_QUEUE), pa.Table.from_pylist(review, schema=GOLD_REVIEW_QUEUE.schema),
                    mode="append")

    # quarantined rows from tables without user_id: a dead letter's original bytes, a review-queue row
    from datetime import datetime, timezone

    from schemas.tables import QUALITY_QUARANTINE
    now = datetime.now(timezone.utc)
    quarantined = [{"run_id": "r1", "table": t, "suite": t, "expectation": "x", "column": "c", "row_key": k,
                    "user_id": None, "row": row, "quarantined_at": now, "date": now.date()}
                   for t, k, row in (
                       ("bronze/deadletter", "1", orjson.dumps({"original": f'{{"user_id": "{ERASED}"}}'}).decode()),
                       ("gold/review_queue", "2", orjson.dumps(review[0]).decode()),
                       ("gold/review_queue", "3", orjson.dumps(review[-1]).decode()))]
    write_deltalake(ensure_table(s, QUALITY_QUARANTINE),
                    pa.Table.from_pylist(quarantined, schema=QUALITY_QUARANTINE.schema), mode="append",
                    partition_by=list(QUALITY_QUARANTINE.partition_by))

    export = s.lake / "exports" / "sft" / "v1"
    rows = [{"user_id": e["user_id"], "episode_id": e["episode_id"], "messages": f"episode {e['episode_id']}"}
            for e in episodes]
    write_deltalake(str(export / "train"), pa.Table.from_pylist(rows))
    (export / "holdout.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    (export / "manifest.json").write_bytes(orjson.dumps({"rows": len(rows), "source": "silver/episodes"}))
    return raw


def files_naming(root, needles: list[str]) -> list[str]:
    """Every file under `root` whose raw bytes, or whose Parquet contents decoded, hold one of `needles`."""
    wanted = [n.encode() for n in needles]
    hits = []
    for f in sorted(root.rglob("*")):
        if not f.is_file():
            continue
        blobs = [f.read_bytes()]
        if f.suffix == ".parquet":
            blobs.append(orjson.dumps(pq.read_table(f).to_pylist(), default=lambda v: v.decode("latin-1")
                                      if isinstance(v, bytes) else str(v)))
        if any(w in b for w in wanted for b in blobs):
            hits.append(str(f.relative_to(root)))
    return hits


def users_in(s: Settings, spec) -> dict[str, int]:
    col = read_table(s, spec, columns=["user_id"]).column("user_id").to_pylist()
    return {u: col.count(u) for u in set(col)}


def run_cli(s: Settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trajlake.cli", *args], capture_output=True, text=True,
                          env=settings_env(s), cwd=REPO, timeout=300)


def test_erase_leaves_no_file_naming_the_user(s):
    raw = build_lake(s)
    pseud = subject_for(_key(s), raw_id=ERASED).pseudonym
    keys = KeyStore(s.key_store_path)
    key_bytes = keys.find(pseud)
    assert key_bytes is not None
    # the scan is not vacuous: before the erase the lake names the user in data files and in the Delta log
    before = files_naming(s.lake, [ERASED, pseud])
    assert any("_delta_log" in f for f in before) and any("deadletter" in f for f in before)
    assert any(f.startswith("exports/") for f in before)
    others = {spec.id: {u: n for u, n in users_in(s, spec).items() if u != pseud} for spec in USER_TABLES}
    reviews = read_table(s, GOLD_REVIEW_QUEUE).num_rows
    mine = {e["episode_id"] for e in read_table(s, SILVER_EPISODES).to_pylist() if e["user_id"] == pseud}
    from schemas.tables import QUALITY_QUARANTINE
    quarantine_left = sorted(r["row_key"] for r in read_table(s, QUALITY_QUARANTINE).to_pylist()
                             if r["row_key"] != "1" and orjson.loads(r["row"]).get("episode_id") not in mine)
    assert len(quarantine_left) < 3
    # the raw ids of the other users: their tokens open with their keys (support lookups), before and after
    other_raw = sorted({e["user_id"] for e in raw} - {ERASED})

    r = run_cli(s, "erase", "--user", ERASED, "--note", f"ticket 42 from {ERASED}, omar@example.com")
    assert r.returncode == 0, r.stdout + r.stderr

    assert files_naming(s.lake, [ERASED, pseud]) == []
    for spec in USER_TABLES:
        assert users_in(s, spec) == others[spec.id], spec.id
    assert read_table(s, GOLD_REVIEW_QUEUE).num_rows == reviews - 2  # the user's two episodes
    # quarantined rows with no user_id are found by their text: the raw id, the user's episode ids
    from schemas.tables import QUALITY_QUARANTINE
    assert sorted(r["row_key"] for r in read_table(s, QUALITY_QUARANTINE).to_pylist()) == quarantine_left
    # readers still filter the rewritten tables (pyarrow pushdown, DuckDB)
    ids = read_table(s, BRONZE_EVENTS, columns=["event_id"]).column("event_id").to_pylist()
    assert count_present(s, BRONZE_EVENTS, "event_id", ids[:5] + ["nope"]) == 5
    assert connect(s).sql(f"SELECT count(*) FROM silver_steps WHERE user_id = '{pseud}'").fetchall() == [(0,)]
    dead = read_table(s, BRONZE_DEADLETTER).to_pylist()
    assert len(dead) == len(other_raw)  # the other users' dead letters stay
    export = s.lake / "exports" / "sft" / "v1"
    assert len((export / "holdout.jsonl").read_text().splitlines()) == reviews - 2
    # the key is gone from the store and its bytes from the store's file
    assert keys.find(pseud) is None
    assert key_bytes not in s.key_store_path.read_bytes()
    bronze = read_table(s, BRONZE_EVENTS, columns=["user_id", "user_ref"]).to_pylist()
    for raw_id in other_raw:
        p = subject_for(_key(s), raw_id=raw_id).pseudonym
        ref = next(b["user_ref"] for b in bronze if b["user_id"] == p)
        assert reveal(keys.find(p), p, ref) == raw_id
    # one PII-free audit row
    audit = read_table(s, AUDIT_ERASURES).to_pylist()
    assert len(audit) == 1
    a = audit[0]
    assert a["subject"] == subject_digest(_key(s), pseud) and a["matched_by"] == "raw_id" and a["key_shredded"]
    by_table = {t["table"]: t["rows_deleted"] for t in a["tables"]}
    assert by_table["bronze/events"] == 83 and by_table["bronze/deadletter"] == 2
    assert by_table["silver/episodes"] == 2 and by_table["gold/review_queue"] == 2
    assert by_table["exports/sft/v1/train"] == 2 and by_table["exports/sft/v1/holdout.jsonl"] == 2
    assert a["policy_version"] == POLICY_VERSION and "omar@example.com" not in a["note"] and "42" in a["note"]

    # a rerun is idempotent: nothing left to delete, and it is audited too
    r = run_cli(s, "erase", "--user", ERASED)
    assert r.returncode == 0, r.stdout + r.stderr
    audit = read_table(s, AUDIT_ERASURES).to_pylist()
    assert len(audit) == 2 and sorted(a["rows_deleted"] for a in audit)[0] == 0
    assert not [a for a in audit if a["rows_deleted"] == 0][0]["key_shredded"]
    assert files_naming(s.lake, [ERASED, pseud]) == []
    for spec in USER_TABLES:
        assert users_in(s, spec) == others[spec.id], spec.id


def test_erase_while_a_writer_appends(s):
    """The stream sink keeps committing other users' rows during the erase: no commit of either side is lost."""
    build_lake(s, trajectories=3)
    subject = subject_for(_key(s), raw_id="mia_li_3668")
    before = users_in(s, BRONZE_EVENTS)
    rows = read_table(s, BRONZE_EVENTS, columns=["user_id", "date"]).to_pylist()
    day = next(r["date"] for r in rows if r["user_id"] == subject.pseudonym)
    # the writer appends to a partition the erase rewrites: the race that could lose rows if it went undetected
    template = next(r for r in read_table(s, BRONZE_EVENTS).to_pylist()
                    if r["user_id"] != subject.pseudonym and r["date"] == day)
    writer = DeltaSinkWriter(s, SINK_TARGETS["events.clean"], "w2")
    written, errors, stop = [0], [], threading.Event()

    def append() -> None:
        offset = 0
        while not stop.is_set():
            try:
                ev = {k: template[k] for k in ("event_id", "schema", "event_type", "session_id", "task_id", "user_id",
                                                "action_id", "intent_id", "agent_version", "prompt_variant",
                                                "task_type")}
                ev.update(event_id=f"extra-{offset}", ts=template["ts"].isoformat(), body={})
                value = clean_record(ev, SourceRecord("t", 0, offset, None, b""), now_iso(), "privacy-1")
                n, _ = writer.commit([Record("tl.events.clean", 0, offset, value)])
                written[0] += n
                offset += 1
                time.sleep(0.1)  # a sink commits every 0.5–2 s; a tight loop would starve any rewrite
            except Exception as exc:  # noqa: BLE001 — the assertion below reports it
                errors.append(exc)
                return

    t = threading.Thread(target=append)
    t.start()
    try:
        time.sleep(0.5)
        done = erase_user(s, Target(subject.pseudonym, subject.patterns()))
    finally:
        time.sleep(0.5)  # the writer keeps going after the erase, on the scrubbed log
        stop.set()
        t.join(30)
    assert not errors, errors
    assert written[0] > 0 and done.rows_deleted > 0 and not done.residual
    after = users_in(s, BRONZE_EVENTS)
    assert subject.pseudonym not in after
    other = template["user_id"]
    assert after[other] == before[other] + written[0]
    assert files_naming(table_path(s, BRONZE_EVENTS), ["mia_li_3668", subject.pseudonym]) == []


@pytest.mark.unit
def test_a_lost_commit_race_is_retried():
    calls = []

    def action():
        calls.append(1)
        if len(calls) < 3:
            raise CommitFailedError("Transaction failed: a concurrent transaction won")
        return "ok"

    assert _retrying(action, 5, "deleting", lambda _: None) == "ok" and len(calls) == 3
    with pytest.raises(CommitFailedError):
        _retrying(lambda: (_ for _ in ()).throw(CommitFailedError("conflict")), 2, "deleting", lambda _: None)


def test_an_unknown_user_and_a_missing_lake_are_one_line_errors(s):
    def error(*args: str) -> str:
        r = run_cli(s, "erase", *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        return " ".join(r.stderr.split())  # rich wraps long lines at the terminal width

    assert "there is no lake" in error("--user", "nobody_0000")
    build_lake(s, trajectories=1)
    assert "no rows, key or earlier erasure for --user nobody_0000" in error("--user", "nobody_0000")
    assert "u_ followed by 24 hex" in error("--pseudonym", "mia_li_3668")
    assert "exactly one" in error("--user", ERASED, "--pseudonym", "u_" + "0" * 24)


def test_dry_run_changes_nothing(s):
    build_lake(s, trajectories=1)
    versions = {spec.id: ensure_table(s, spec).version() for spec in USER_TABLES}
    r = run_cli(s, "erase", "--user", "mia_li_3668", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "bronze/events" in r.stdout and "48" in r.stdout
    assert {spec.id: ensure_table(s, spec).version() for spec in USER_TABLES} == versions
    assert KeyStore(s.key_store_path).find(subject_for(_key(s), raw_id="mia_li_3668").pseudonym) is not None


def test_an_erase_by_pseudonym_cannot_search_dead_letters_for_the_raw_id(s):
    build_lake(s, trajectories=6)
    pseud = subject_for(_key(s), raw_id=ERASED).pseudonym
    r = run_cli(s, "erase", "--pseudonym", pseud)
    assert r.returncode == 0, r.stderr
    assert files_naming(s.lake, [pseud]) == []
    # the raw id survives only in the quarantines' original bytes (the dead letters, and a dead letter's row
    # quarantined by a suite), as docs/privacy.md warns
    assert {f.split("/")[0] + "/" + f.split("/")[1] for f in files_naming(s.lake, [ERASED])} <= {
        "bronze/deadletter", "quality/quarantine"}
    assert read_table(s, AUDIT_ERASURES).to_pylist()[0]["matched_by"] == "pseudonym"
