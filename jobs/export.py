"""Training exports: leak-free splits of scored episodes in trainers' formats, PII-scanned, with a manifest that
reproduces them byte for byte (`trajlake export`)."""
from __future__ import annotations

import hashlib
import os
from array import array
from itertools import accumulate
import shutil
import threading
import uuid
import logging
import mmap
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import duckdb
import orjson
import numpy as np
import pyarrow as pa
from xxhash import xxh3_128_digest

from jobs.conversations import CONVERSATION_EVENTS, conversation
from jobs.export_rows import BUILDERS, FORMATS, RFT_GRADER, Episode, eligible_sql
from jobs.splits import (NEAR_DUPLICATE_METHOD, PRECEDENCE, SPLITS, clusters, keep_one_per_cluster, leakage,
                         near_duplicate_edges, prompt_digest_sql, prompt_words_sql, splits_params,
                         splits_sql)
from lake.duckdb_views import connect, view_name
from lake.locks import outside_erase
from lake.tables import ensure_table, open_table, table_path
from lake.tables import spec as table_spec
from privacy import POLICY_VERSION
from privacy.leakage import GroundTruth, PatternScanner
from schemas.reward import ExportSpec, RewardSpec, RewardSpecError, load_reward_spec, reward_spec_digest
from schemas.settings import Settings
from schemas.tables import (BRONZE_EVENTS, EXPORT_HOLDOUT, GOLD_EPISODE_SCORES, GOLD_STEP_SIGNALS, SILVER_EPISODES,
                            SILVER_STEPS)

log = logging.getLogger("trajlake.export")
MANIFEST = "manifest.json"
SOURCES = (BRONZE_EVENTS, SILVER_EPISODES, SILVER_STEPS, GOLD_EPISODE_SCORES, GOLD_STEP_SIGNALS, EXPORT_HOLDOUT)
GROUP_COLUMN = {"user": "user_id", "task": "task_id", "session": "session_id"}
RESERVED = {EXPORT_HOLDOUT.name}


class ExportFailed(RuntimeError):
    """The export was refused (leakage, PII, a quality gate, bad inputs); nothing was published."""

    def __init__(self, message: str, manifest: dict[str, Any] | None = None):
        super().__init__(message)
        self.manifest = manifest


@dataclass(frozen=True)
class ExportRequest:
    """What to export. `sources` pins Delta versions (None: the latest, which the manifest then records)."""

    name: str
    formats: tuple[str, ...]
    since: date
    until: date
    reward_version: str | None = None
    sources: dict[str, int | None] | None = None   # a table pinned to None is read as empty (it did not exist)
    # publish despite failed non-critical expectations (leakage, splits); recorded in the manifest. PII never passes.
    allow_failed_checks: bool = False

    def check(self) -> None:
        if (not self.name or not all(c.isalnum() or c in "-_." for c in self.name) or self.name in RESERVED
                or self.name.startswith(".")):
            # a leading dot would make a hidden directory, or walk out of the exports directory ("..")
            raise ExportFailed(f"export name {self.name!r}: use letters, digits, '-', '_' or '.', starting with a "
                               f"letter or digit, and not {', '.join(sorted(RESERVED))}")
        unknown = set(self.formats) - set(FORMATS)
        if unknown or not self.formats:
            raise ExportFailed(f"unknown format(s) {sorted(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
        if self.since >= self.until:
            raise ExportFailed(f"--since {self.since} is not before --until {self.until}")


@dataclass
class ExportResult:
    path: Path
    manifest: dict[str, Any]

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        return self.manifest["counts"]["rows"]


Progress = Callable[[str], None]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pinned_sources(settings: Settings, sources: dict[str, int | None] | None) -> dict[str, int | None]:
    """Each source table's Delta version: the one asked for, else the latest (None: the table does not exist, or
    did not when the export being reproduced was made)."""
    out: dict[str, int | None] = {}
    for t in SOURCES:
        if sources and t.id in sources:
            out[t.id] = sources[t.id]
        else:
            dt = open_table(settings, t)
            out[t.id] = None if dt is None else dt.version()
    return out


def _open_lake(settings: Settings, versions: dict[str, int | None]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false").fetchall()
    try:
        connect(settings, {k: v for k, v in versions.items() if v is not None}, con=con)
    except Exception as exc:  # a pinned version that time travel can no longer reach
        raise ExportFailed(f"cannot read the lake at the pinned versions {versions}: {exc}. A version removed by "
                           "VACUUM cannot be reproduced") from None
    for table_id, version in versions.items():
        if version is None:
            # absent when the export was made: read as empty even if it exists now (a holdout registry created
            # since would otherwise move groups into holdout on a rebuild)
            con.execute(f"DROP VIEW IF EXISTS {view_name(table_id)}").fetchall()
            con.register(view_name(table_id), table_spec(table_id).schema.empty_table())
    return con


def _latest_sql(table: str, key: str, columns: str, where: str) -> str:
    """The latest revision of each `key` among `table`'s rows matching `where`. A semi-join with the keys' latest
    revisions, not `QUALIFY row_number() …`: the window drags every column through a partitioned sort (with the
    steps' texts, 19 s of the 1M export's fragment query against 7 s this way). (key, revision) is the table's
    declared key; a key written twice at one revision (a task the join had forgotten, started again by a late
    event: docs/design.md) matched twice, and the row closed later is the one every reader takes."""
    return f"""
        SELECT {columns} FROM {table}
        SEMI JOIN (SELECT {key}, latest.revision AS revision, latest.closed_at AS closed_at
                   FROM (SELECT {key}, max({{'revision': revision, 'closed_at': closed_at}}) AS latest
                         FROM {table} WHERE {where} GROUP BY {key}))
             USING ({key}, revision, closed_at)
        WHERE {where}"""


def _episodes_sql(reward_version: str) -> str:
    # the latest revision of each episode in the window, with its scores under the reward version
    return f"""
    CREATE OR REPLACE TEMP TABLE ep AS
    WITH e AS ({_latest_sql("silver_episodes", "episode_id", "*", "date >= $since AND date < $until")}),
    s AS (SELECT episode_id, revision, composite, gate_passed FROM gold_episode_scores
          WHERE reward_version = '{reward_version}' AND date >= $since AND date < $until)
    -- a score of an older revision (the episode was reopened or closed late after the last scoring run) is stale:
    -- its composite belongs to an outcome the episode no longer has, so the episode counts as unscored
    SELECT e.episode_id, e.session_id, e.task_id, e.user_id, e.agent_version, e.prompt_variant,
           coalesce(e.task_type, 'unknown') AS task_type, e.outcome, e.date, e.policy_version,
           CASE WHEN s.revision = e.revision THEN s.composite END AS composite,
           CASE WHEN s.revision = e.revision THEN s.gate_passed END AS gate_passed,
           s.revision IS NOT NULL AND s.revision <> e.revision AS stale_score
    FROM e LEFT JOIN s USING (episode_id)"""


def _user_text_sql(margin: int) -> str:
    # What the user said in each episode: its frontend user messages, or — for an episode an agent reported
    # alone (the SDK or the OTLP collector, no tracker) — the user turns of its LLM calls' context snapshots, so
    # that near duplicates and the prompt leakage check see those episodes too. The snapshot's text is only read
    # for episodes without a user message (parsing every LLM call's JSON costs seconds at a million episodes).
    window = (f"b.date >= $since - INTERVAL {margin} DAY AND b.date < $until + INTERVAL {margin} DAY")
    return f"""
    CREATE OR REPLACE TEMP TABLE ep_text AS
    WITH um AS (
        SELECT ep.episode_id AS id,
               string_agg(json_extract_string(b.body, '$.text'), '\n' ORDER BY b.ts, b.event_id) AS text
        FROM ep JOIN bronze_events b ON b.session_id = ep.session_id AND b.task_id = ep.task_id
        WHERE b.event_type = 'user_message' AND {window}
        GROUP BY ALL),
    sn AS (
        SELECT ep.episode_id AS id,
               string_agg(array_to_string(list_transform(
                   list_filter(json_extract(b.body, '$.context_snapshot[*]'),
                               lambda m: json_extract_string(m, '$.role') = 'user'
                                    AND json_type(m, '$.content') = 'VARCHAR'),
                   lambda m: json_extract_string(m, '$.content')), '\n'), '\n' ORDER BY b.ts, b.event_id) AS text
        FROM ep JOIN bronze_events b ON b.session_id = ep.session_id AND b.task_id = ep.task_id
        WHERE b.event_type = 'llm_call' AND {window}
          AND ep.episode_id NOT IN (SELECT id FROM um)
        GROUP BY ALL)
    -- the words once, for both the near-duplicate search and the prompt digest of the leakage check
    SELECT id, text, {prompt_words_sql("text")} AS words FROM (
        SELECT id, text FROM um WHERE text IS NOT NULL
        UNION ALL
        SELECT id, text FROM sn WHERE text IS NOT NULL AND text <> '')"""


def _fragments_sql(margin: int, reward_version: str) -> str:
    # every kept episode's events and steps as one JSON fragment per row, each followed by a comma, sorted by the
    # episode's rank, events before steps, each in its own order. A sort, not a grouping: DuckDB's ordered
    # aggregates (string_agg/list with ORDER BY) cost twice as much as sorting the same rows; `_Chunk.lists` does
    # the grouping. The trailing comma makes an episode's run of fragments, read straight from the Arrow column's
    # data buffer, a JSON list once bracketed: no Python string per fragment.
    return f"""
    WITH st AS ({_latest_sql(
        "silver_steps", "step_id", "session_id, task_id, step_id, revision, action_id, intent_id, step_index, output, "
        "final_value, outcome, accepted, rejected, edited, undone, retried, edit_distance",
        f"date >= $since - INTERVAL {margin} DAY AND date < $until + INTERVAL {margin} DAY")}),
    sg AS (
        SELECT step_id, revision, overwritten, own_reward, credit_share, step_reward FROM gold_step_signals
        WHERE reward_version = '{reward_version}'
          AND date >= $since - INTERVAL {margin} DAY AND date < $until + INTERVAL {margin} DAY)
    SELECT rank, kind, fragment FROM (
        -- the bodies are JSON text already: spliced in as they are, never parsed here
        SELECT k.rank, 0::UTINYINT AS kind, epoch_us(b.ts) AS o1, b.event_id AS o2,
               '{{"t":' || to_json(b.event_type) || ',"a":' || coalesce(to_json(b.action_id), 'null')
               || ',"b":' || b.body || '}},' AS fragment
        FROM kept k JOIN bronze_events b ON b.session_id = k.session_id AND b.task_id = k.task_id
        WHERE b.event_type IN ({", ".join(f"'{t}'" for t in CONVERSATION_EVENTS)})
          AND b.date >= $since - INTERVAL {margin} DAY AND b.date < $until + INTERVAL {margin} DAY
        UNION ALL
        SELECT k.rank, 1::UTINYINT, st.step_index, st.step_id,
               to_json({{'step_id': st.step_id, 'action_id': st.action_id, 'intent_id': st.intent_id,
                        'step_index': st.step_index, 'output': st.output, 'final_value': st.final_value,
                        'outcome': st.outcome, 'accepted': st.accepted, 'rejected': st.rejected, 'edited': st.edited,
                        'undone': st.undone, 'retried': st.retried, 'edit_distance': st.edit_distance,
                        'overwritten': coalesce(sg.overwritten, false), 'own_reward': sg.own_reward,
                        'credit_share': sg.credit_share, 'step_reward': sg.step_reward}})::VARCHAR || ','
        FROM kept k JOIN st ON st.session_id = k.session_id AND st.task_id = k.task_id
        LEFT JOIN sg ON sg.step_id = st.step_id AND sg.revision = st.revision)
    ORDER BY rank, kind, o1, o2"""


# the rows of `_fragments_sql`
_FRAGMENTS_SCHEMA = pa.schema([("rank", pa.int64()), ("kind", pa.uint8()), ("fragment", pa.string())])


@dataclass
class _Chunk:
    """Episodes `first`… of the export (`episodes`: rows of the `kept` table) with all their events and steps as
    JSON fragments (`fragments`: rank, kind, fragment; sorted by rank, then kind: events (0), then steps (1); each
    fragment is a JSON value followed by a comma)."""

    first: int
    episodes: pa.Table
    fragments: pa.Table

    def lists(self) -> Iterator[tuple[bytes, bytes]]:
        """Each episode's events and steps, as two JSON lists (UTF-8)."""
        texts = self.fragments.column(2)
        texts = texts.chunk(0) if texts.num_chunks == 1 else pa.concat_arrays(texts.chunks or [pa.array([], texts.type)])
        data = texts.buffers()[2]
        data = memoryview(data) if data is not None else memoryview(b"")
        wide = pa.types.is_large_string(texts.type)
        offsets = np.frombuffer(texts.buffers()[1], np.int64 if wide else np.int32, len(texts) + 1,
                                texts.offset * (8 if wide else 4)) if len(texts) else np.zeros(1, np.int64)
        # the rows are sorted by rank and kind, so 2·rank + kind is sorted too: one search finds every boundary
        key = self.fragments.column(0).to_numpy() * 2 + self.fragments.column(1).to_numpy()
        ranks = np.arange(self.first, self.first + self.episodes.num_rows) * 2
        bounds = offsets[np.searchsorted(key, np.stack([ranks, ranks + 1, ranks + 2], axis=1))].tolist()
        join = b"".join
        for a, b, c in bounds:
            # a run of fragments is "x,y,": without its last comma and in brackets, the list [x,y]
            yield (join((b"[", data[a:b - 1], b"]")) if b > a else b"[]",
                   join((b"[", data[b:c - 1], b"]")) if c > b else b"[]")

    def save(self, stem: Path) -> None:
        """Write the chunk as two Arrow IPC files `stem`.episodes and `stem`.fragments (slices written as slices:
        a formatting process maps them instead of receiving them through a pipe)."""
        for name in ("episodes", "fragments"):
            table = getattr(self, name)
            with pa.OSFile(f"{stem}.{name}", "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
                w.write_table(table)

    @classmethod
    def load(cls, first: int, stem: Path) -> "_Chunk":
        """The chunk `save` wrote, memory-mapped; its files are removed (the mapping lives on until freed)."""
        tables = []
        for name in ("episodes", "fragments"):
            tables.append(pa.ipc.open_file(pa.memory_map(f"{stem}.{name}")).read_all())
            os.unlink(f"{stem}.{name}")
        return cls(first, *tables)


def episode_chunks(kept: pa.Table, fragments: pa.RecordBatchReader, size: int) -> Iterator[_Chunk]:
    """`kept` (row i has rank i) in chunks of `size` episodes, each with its rows of `fragments` (sorted by rank).
    The parent only slices here (no copies); the formatting processes do the per-episode work."""
    n = kept.num_rows
    schema = fragments.schema
    lo, pieces = 0, []
    for batch in fragments:
        ranks = batch.column(0).to_numpy()
        start = 0
        while start < len(ranks):
            cut = int(np.searchsorted(ranks, min(lo + size, n), side="left"))
            pieces.append(batch.slice(start, cut - start))
            if cut == len(ranks):
                break
            yield _Chunk(lo, kept.slice(lo, size), pa.Table.from_batches(pieces, schema))
            lo, pieces, start = lo + size, [], cut
    while lo < n:
        yield _Chunk(lo, kept.slice(lo, size), pa.Table.from_batches(pieces, schema))
        lo, pieces = lo + size, []


@dataclass
class _Part:
    """The rows of one format and split that one batch of episodes made, in episode order: their JSON lines
    concatenated, where each line ends, each row's content digest (16 bytes each), its position among the batch's
    rows of that format (to restore the order across splits) and its episode's index in the batch. Compact, so
    a batch passes from a formatting process to the writer as a few arrays (the lines themselves through the
    chunk's rows file), not as an object per row."""

    lines: bytes | memoryview   # empty while they are in the chunk's rows file, at `at`
    ends: array
    digests: bytes
    order: array
    episodes: array
    at: int = 0

    def rows(self) -> Iterator[tuple[int, bytes, bytes, int]]:
        start = 0
        for k, end in enumerate(self.ends):
            yield self.order[k], self.digests[16 * k:16 * k + 16], self.lines[start:end], self.episodes[k]
            start = end


@dataclass
class _Writer:
    """JSON Lines per format and split in a deterministic order, exact duplicates dropped, each file's sha256
    computed as it is written. Writes through: what it is given may be a view of a mapped file that goes away
    after the call. Given the file descriptor behind such a view, it copies in the kernel (copy_file_range)
    instead of through the view: half the parent's time went to faulting in and copying 9 GB of lines."""

    root: Path
    files: dict[tuple[str, str], Any] = field(default_factory=dict)
    hashes: dict[tuple[str, str], Any] = field(default_factory=dict)
    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    seen: dict[str, set[bytes]] = field(default_factory=dict)
    exact_duplicates: dict[str, int] = field(default_factory=dict)

    def write(self, fmt: str, parts: dict[str, _Part], source: int | None = None) -> set[int]:
        """Append one batch's rows of `fmt`, except rows whose training content (digest) this format already has;
        returns the batch indices of the episodes that got a row. `source`: an open file whose bytes at each
        part's `at` are the part's lines."""
        seen = self.seen.setdefault(fmt, set())
        digests = [p.digests[i:i + 16] for p in parts.values() for i in range(0, len(p.digests), 16)]
        wrote: set[int] = set()
        if len(set(digests)) == len(digests) and seen.isdisjoint(digests):
            # the usual case, with no Python work per row: nothing in this batch was seen before
            seen.update(digests)
            for split, p in parts.items():
                self._append(fmt, split, p.lines, len(p.ends), None if source is None else (source, p.at))
                wrote.update(p.episodes)
            return wrote
        # identical training content is written once per format, whichever episode (first in order) it came from
        kept: dict[str, list[bytes]] = {}
        for _, split, digest, line, ep in sorted((o, split, d, bytes(line), ep) for split, p in parts.items()
                                                 for o, d, line, ep in p.rows()):
            if digest in seen:
                self.exact_duplicates[fmt] = self.exact_duplicates.get(fmt, 0) + 1
                continue
            seen.add(digest)
            kept.setdefault(split, []).append(line)
            wrote.add(ep)
        for split, lines in kept.items():
            self._append(fmt, split, b"".join(lines), len(lines))
        return wrote

    def _append(self, fmt: str, split: str, data: bytes | memoryview, n: int,
                source: tuple[int, int] | None = None) -> None:
        key = (fmt, split)
        f = self.files.get(key)
        if f is None:
            (self.root / fmt).mkdir(parents=True, exist_ok=True)
            # unbuffered: the kernel copies into it behind Python's back, so a buffer would reorder the bytes
            f = self.files[key] = open(self.root / f"{fmt}/{split}.jsonl", "wb", buffering=0)
            self.hashes[key] = hashlib.sha256()
        done = _copy_range(source[0], source[1], f.fileno(), len(data)) if source is not None else 0
        view = memoryview(data)
        while done < len(view):
            done += f.write(view[done:])   # a raw file may write less than it was given
        view.release()
        self.hashes[key].update(data)
        counts = self.rows.setdefault(fmt, {})
        counts[split] = counts.get(split, 0) + n

    def close(self, formats: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
        """Close the files; returns each one's sha256, size and rows, keyed by its path in the export. Every split
        of each of `formats` gets its file, empty when no row went to it: a split of no rows had no file, and
        the training readers (and a trainer's loop over the four splits) failed on it (found in review)."""
        for fmt in formats:
            for split in SPLITS:
                if (fmt, split) not in self.files:
                    self._append(fmt, split, b"", 0)
        out = {}
        for (fmt, split), f in sorted(self.files.items()):
            out[f"{fmt}/{split}.jsonl"] = {"sha256": self.hashes[(fmt, split)].hexdigest(), "bytes": f.tell(),
                                           "rows": self.rows[fmt][split]}
            f.close()
        return out


def _copy_range(src: int, at: int, dst: int, size: int) -> int:
    """Copy `size` bytes of `src` from offset `at` to `dst`'s position in the kernel; returns how many were copied
    (fewer when the kernel or file system cannot: the caller writes the rest itself)."""
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(src, dst, size - done, at + done)
        except (AttributeError, OSError):   # not Linux, an old kernel, or files the call cannot join
            return done
        if n == 0:
            return done
        done += n
    return done


@dataclass
class _PiiScan:
    """The PII scan of an export: every text value its rows are built from — each message's content, tool-call
    arguments, outputs, final values and grader references of every exported episode — scanned in batches (one
    regex pass per batch, not per row). Everything else in a row is an id or a number the pipeline made."""

    scanner: PatternScanner
    batch: list[str] = field(default_factory=list)
    episodes: list[str] = field(default_factory=list)
    size: int = 0
    hits: dict[str, int] = field(default_factory=dict)          # kind → distinct values found (never the values)
    where: dict[str, list[str]] = field(default_factory=dict)   # kind → some episode ids, to find the rows
    per_episode: dict[str, int] = field(default_factory=dict)   # episode → values found in its texts (hits only)

    def add(self, episode_id: str, conv: Any, steps: Sequence[dict[str, Any]]) -> None:
        # each distinct text once: a step's output is usually also its assistant message's content, and the same
        # text finds the same values (what the scan reports: distinct values, and per episode on a rescan)
        mine: dict[str, None] = {}
        for m in conv.messages:
            if m.get("content"):
                mine[m["content"]] = None
            for call in m.get("tool_calls") or ():
                mine[call["function"]["arguments"]] = None
        if conv.grader:
            mine[orjson.dumps(conv.grader).decode()] = None
        for st in steps:
            if st.get("output"):
                mine[st["output"]] = None
            if st.get("final_value"):
                mine[st["final_value"]] = None
        self.batch.extend(mine)
        self.batch.append("\x00")  # a boundary no pattern crosses
        self.episodes.append(episode_id)
        self.size += sum(map(len, mine))
        if self.size >= 8 << 20:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        found = self.scanner.scan(["\n".join(self.batch)]).found
        for kind, values in found.items():
            self.hits[kind] = self.hits.get(kind, 0) + len(values)
            # which episodes: rescan just this batch's episodes one by one (rare: only when something was found)
            self.where.setdefault(kind, [])
        if found:
            chunks, current = [], []
            for t in self.batch:
                if t == "\x00":
                    chunks.append(current)
                    current = []
                else:
                    current.append(t)
            for eid, texts in zip(self.episodes, chunks):
                mine = self.scanner.scan(["\n".join(texts)]).found
                for kind, values in mine.items():
                    self.per_episode[eid] = self.per_episode.get(eid, 0) + len(values)
                    if len(self.where[kind]) < 5:
                        self.where[kind].append(eid)
        self.batch, self.episodes, self.size = [], [], 0


@dataclass(frozen=True)
class _FormatJob:
    """What a formatting process needs: the formats, the export policy and the PII ground truth."""

    formats: tuple[str, ...]
    policy: ExportSpec
    reward_version: str
    ground_truth: Path | None
    scratch: Path | None = None   # where chunks and their rows pass between processes, as files


@dataclass
class _Formatted:
    """One batch of episodes as rows (per format, per split), each episode's (id, split, group, prompt digest) for
    the quality suite, and the PII scan of their texts."""

    n: int
    parts: dict[str, dict[str, _Part]]
    episodes: list[tuple[str, str, str, str]]
    pii_hits: dict[str, int]
    pii_where: dict[str, list[str]]
    pii_episodes: dict[str, int]
    rows_file: str | None = None   # the parts' lines, when a formatting process wrote them to a file
    source: int | None = None      # that file, open, while `mapped`

    @contextmanager
    def mapped(self) -> Iterator["_Formatted"]:
        """The parts with their lines in memory (mapped from `rows_file`, which is removed afterwards)."""
        if self.rows_file is None:
            yield self
            return
        f = open(self.rows_file, "rb")
        size = os.fstat(f.fileno()).st_size
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        view = memoryview(mm) if mm is not None else memoryview(b"")
        try:
            for parts in self.parts.values():
                for p in parts.values():
                    p.lines = view[p.at:p.at + (p.ends[-1] if p.ends else 0)]
            self.source = f.fileno()
            yield self
        finally:
            self.source = None
            for parts in self.parts.values():
                for p in parts.values():
                    p.lines.release()
            view.release()
            if mm is not None:
                mm.close()
            f.close()
            os.unlink(self.rows_file)


_job: _FormatJob | None = None
_scanner: PatternScanner | None = None


def _start_formatting(job: _FormatJob) -> None:
    global _job, _scanner
    _job = job
    _scanner = PatternScanner(GroundTruth.load(job.ground_truth) if job.ground_truth else None)


def _format_batch(batch: _Chunk) -> _Formatted:
    """A chunk of episodes → training rows of every format, and their PII scan."""
    assert _job is not None and _scanner is not None
    builders = [(fmt, BUILDERS[fmt]) for fmt in _job.formats]
    pii = _PiiScan(_scanner)
    out = _Formatted(batch.episodes.num_rows, {}, [], {}, {}, {})
    # (format, split) → lines, digests, positions within the format, episode indices
    acc: dict[tuple[str, str], tuple[list[bytes], list[bytes], list[int], list[int]]] = {}
    position = dict.fromkeys(_job.formats, 0)
    dumps, digest_of, policy, reward_version = orjson.dumps, xxh3_128_digest, _job.policy, _job.reward_version
    for i, (r, (events, steps)) in enumerate(zip(batch.episodes.to_pylist(), batch.lists())):
        conv = conversation((e["t"], e["a"], e["b"]) for e in orjson.loads(events))
        ep = Episode(r["episode_id"], r["user_id"], r["task_id"], r["task_type"], r["agent_version"],
                     r["prompt_variant"], r["outcome"], r["composite"], bool(r["gate_passed"]), r["split"],
                     tuple(orjson.loads(steps)))
        any_row = False
        for fmt, build_rows in builders:
            at = position[fmt]
            for content, meta in build_rows(ep, conv, policy, reward_version):
                body = dumps(content)
                key = (fmt, meta["split"])
                lists = acc.get(key) or acc.setdefault(key, ([], [], [], []))
                # identical training content is written once per format: the digest is of the content alone
                lists[1].append(digest_of(body))
                lists[0].append(b"%b,%b\n" % (body[:-1], dumps(meta)[1:]))
                lists[2].append(at)
                lists[3].append(i)
                at += 1
            if at != position[fmt]:
                position[fmt] = at
                any_row = True
        out.episodes.append((r["episode_id"], r["split"], r["group_hash"], r["prompt_digest"]))
        if any_row:
            pii.add(ep.episode_id, conv, ep.steps)
    pii.flush()
    out.pii_hits, out.pii_where, out.pii_episodes = pii.hits, pii.where, pii.per_episode
    # a 4 MiB buffer: with the default 8 KiB, py-spy put ~7% of a formatting process on writing its ~10k lines
    rows = open(f"{_job.scratch}/{batch.first}.rows", "wb", buffering=1 << 22) if _job.scratch else None
    for (fmt, split), (lines, digests, order, eps) in acc.items():
        part = _Part(b"", array("Q", accumulate(map(len, lines))), b"".join(digests), array("I", order),
                     array("I", eps))
        if rows is None:
            part.lines = b"".join(lines)
        else:
            # to a file the parent maps: through a pipe, the lines would be copied four times and the parent's
            # one thread (which also writes and hashes every file) would spend its time receiving them
            part.at = rows.tell()
            rows.writelines(lines)
        out.parts.setdefault(fmt, {})[split] = part
    if rows is not None:
        rows.close()
        out.rows_file = rows.name
    return out


def _format_saved(task: tuple[int, str]) -> _Formatted:
    """`_format_batch` of a chunk `_Chunk.save` wrote (in a formatting process)."""
    return _format_batch(_Chunk.load(*task))


INLINE_UP_TO = 4096  # episodes; below this, starting the formatting processes costs more than it saves


def _formatted(batches: Iterator[_Chunk], job: _FormatJob, workers: int, total: int) -> Iterator[_Formatted]:
    """Format the batches in order, in `workers` processes (inline when one, or when the export is small)."""
    if workers <= 1 or total <= INLINE_UP_TO or job.scratch is None:
        _start_formatting(replace(job, scratch=None))
        yield from map(_format_batch, batches)
        return
    import multiprocessing
    import queue
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # concurrent.futures, not multiprocessing.Pool: a Pool whose worker dies (OOM killer) or whose initializer
    # fails waits forever; an executor marks itself broken and every pending result raises BrokenProcessPool.
    # forkserver: the parent holds DuckDB's threads, which a plain fork would copy mid-flight.
    job.scratch.mkdir(parents=True, exist_ok=True)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"),
                               initializer=_start_formatting, initargs=(job,))
    # at most a few batches in flight (the queue's bound): reading and saving chunks runs ahead of the writer,
    # not through the whole query into memory
    pending: queue.Queue = queue.Queue(maxsize=workers * 2)
    stopped = threading.Event()
    END = object()

    def offer(item: Any) -> bool:
        """Queue `item` for the consumer, waiting for room; False once the consumer has stopped."""
        while not stopped.is_set():
            try:
                pending.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def feed() -> None:
        try:
            for b in batches:
                if stopped.is_set():
                    return
                b.save(job.scratch / str(b.first))
                if not offer(pool.submit(_format_saved, (b.first, str(job.scratch / str(b.first))))):
                    return
        except BaseException as exc:  # noqa: BLE001 — the reader's failure is the consumer's to raise
            offer(exc)
        else:
            offer(END)

    feeder = threading.Thread(target=feed, name="export-feeder", daemon=True)
    feeder.start()
    finished = False
    try:
        while (item := pending.get()) is not END:
            if isinstance(item, BaseException):
                raise item
            try:
                formatted = item.result()
            except BrokenProcessPool:
                raise ExportFailed("a formatting process died or could not start (out of memory? see the system "
                                   "log); nothing was published. Retry, or set TRAJLAKE_EXPORT_WORKERS lower") from None
            yield formatted
        finished = True
    finally:
        stopped.set()
        while True:  # unblock the feeder and drop what it queued
            try:
                item = pending.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, BaseException) and item is not END:
                item.cancel()
        if not finished:
            # on failure the workers' results are not wanted: end them, or shutting down would wait for a worker
            # that is stuck (in its initializer, or on a batch) forever
            # (`_processes` is private, but Python 3.11's executor has no public way to end its workers)
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.kill()
        feeder.join()
        pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(job.scratch, ignore_errors=True)


def _import_checks() -> None:
    try:
        import great_expectations  # noqa: F401
    except Exception:  # noqa: BLE001 — the checks stage imports it again and reports the failure there
        log.debug("importing Great Expectations ahead of the checks failed", exc_info=True)


def _spec(reward_version: str | None) -> RewardSpec:
    spec = load_reward_spec(reward_version)
    if spec.exports is None:
        raise ExportFailed(f"{spec.version} has no [exports] policy (thresholds for SFT, pairs and KTO); export "
                           "with --reward-version reward-v2 or newer, after scoring with it (`trajlake jobs run`)")
    return spec


def build(settings: Settings, request: ExportRequest, out: Path,
          progress: Progress = lambda _: None) -> tuple[dict[str, Any], list[str]]:
    """Write the export's files into the empty directory `out`; returns its manifest (without version and time)
    and the holdout groups it newly put in the holdout.

    Raises ExportFailed when the leakage check or the PII scan fails."""
    request.check()
    # the request's version, else the one the settings pin (TRAJLAKE_REWARD_VERSION, as the jobs score with),
    # else the newest: a scheduled export pinned by the setting alone must not move to a newer spec by itself
    spec = _spec(request.reward_version or settings.reward_version)
    if settings.pii_ground_truth is not None:
        # up front, not in a formatting process minutes later (where a bad file would break the pool)
        try:
            GroundTruth.load(settings.pii_ground_truth)
        except Exception as exc:  # noqa: BLE001 — any failure to read it is the same mistake for the user
            raise ExportFailed(f"TRAJLAKE_PII_GROUND_TRUTH={settings.pii_ground_truth} cannot be loaded "
                               f"({type(exc).__name__}: {exc}); point it at the customer database (users.json) "
                               "or unset it") from None
    versions = pinned_sources(settings, request.sources)
    if versions[GOLD_EPISODE_SCORES.id] is None:
        raise ExportFailed("no gold/episode_scores yet: run `trajlake jobs run all --start D --end D` first")
    con = _open_lake(settings, versions)
    margin = settings.job_margin_days
    params = {"since": request.since, "until": request.until}

    progress("reading episodes and scores")
    con.execute(_episodes_sql(spec.version), params).fetchall()
    total, unscored, stale = con.execute("SELECT count(*), count(*) FILTER (composite IS NULL), "
                                         "count(*) FILTER (stale_score) FROM ep").fetchall()[0]
    if total == 0:
        raise ExportFailed(f"no episodes in silver/episodes between {request.since} and {request.until}")
    if unscored == total:
        raise ExportFailed(f"none of the {total} episodes is scored under {spec.version}: run `trajlake jobs run "
                           f"all --start {request.since} --end {request.until} --reward-version {spec.version}`")

    progress("assigning splits")
    group_col = GROUP_COLUMN[settings.export_group_by]
    frozen = frozenset(r[0] for r in con.execute(
        "SELECT group_hash FROM exports_holdout_registry WHERE group_by = ?", [settings.export_group_by]).fetchall())
    con.register("_frozen", pa.table({"group_hash": pa.array(sorted(frozen), pa.string())}))
    con.execute("CREATE OR REPLACE TEMP TABLE _splits AS " + splits_sql(
        "(SELECT * FROM ep WHERE composite IS NOT NULL)", group_col, "SELECT group_hash FROM _frozen"),
        splits_params(settings.export_group_by, settings.export_split_salt, settings.export_ratios,
                      settings.export_holdout_share)).fetchall()

    progress("finding near-duplicate prompts")
    con.execute(_user_text_sql(margin), params).fetchall()
    cluster_of = clusters(near_duplicate_edges(con, "ep_text", settings.export_near_duplicate_threshold,
                                               words="words", workers=settings.export_workers or None))
    con.register("_clustered", pa.table({"episode_id": pa.array(list(cluster_of), pa.string())}))
    rank = {x: (PRECEDENCE[split], -composite, x) for x, split, composite in con.execute(
        "SELECT episode_id, s.split, ep.composite FROM _clustered JOIN _splits s USING (episode_id) "
        "JOIN ep USING (episode_id)").fetchall()}
    dropped = keep_one_per_cluster({x: c for x, c in cluster_of.items() if x in rank}, rank)
    con.register("_dropped", pa.table({"episode_id": pa.array(sorted(dropped), pa.string())}))
    # only episodes the formats can make a row of are grouped and formatted (e.g. SFT: above its threshold)
    eligible = eligible_sql(request.formats, spec.exports)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE kept AS
                    SELECT row_number() OVER (ORDER BY ep.episode_id) - 1 AS rank,
                           ep.*, s.split, s.group_hash, {prompt_digest_sql("t.text", words="t.words")} AS prompt_digest
                    FROM ep
                    JOIN _splits s USING (episode_id) LEFT JOIN ep_text t ON t.id = ep.episode_id
                    WHERE ep.episode_id NOT IN (SELECT episode_id FROM _dropped)
                      AND {eligible or 'true'}""").fetchall()
    n_kept = con.execute("SELECT count(*) FROM kept").fetchall()[0][0]

    job = _FormatJob(request.formats, spec.exports, spec.version, settings.pii_ground_truth, out / ".scratch")
    writer = _Writer(out)
    pii_hits: dict[str, int] = {}
    pii_where: dict[str, list[str]] = {}
    index: list[tuple[str, str, str, str]] = []   # (episode, split, group, prompt digest) of each exported episode
    pii_episodes: dict[str, int] = {}
    done = 0
    progress(f"writing {n_kept:,} episodes")
    kept = con.sql("SELECT * EXCLUDE (rank) FROM kept ORDER BY rank").to_arrow_table()
    fragments = con.sql(_fragments_sql(margin, spec.version), params=params).to_arrow_reader(1 << 16)
    batches = episode_chunks(kept, fragments, 2048)
    checks_imported: threading.Thread | None = None
    for formatted in _formatted(batches, job, settings.export_workers or os.cpu_count() or 1, n_kept):
        if checks_imported is None and n_kept > INLINE_UP_TO:
            # Great Expectations takes seconds to import, and the parent has time to spare while the formatting
            # processes work (started only now: they exist, so they cannot inherit the import; see below)
            checks_imported = threading.Thread(target=_import_checks, name="import-checks", daemon=True)
            checks_imported.start()
        wrote: set[int] = set()
        with formatted.mapped():
            for fmt, parts in formatted.parts.items():
                wrote |= writer.write(fmt, parts, formatted.source)
        index.extend(formatted.episodes[i] for i in sorted(wrote))
        pii_episodes.update(formatted.pii_episodes)
        for kind, n in formatted.pii_hits.items():
            pii_hits[kind] = pii_hits.get(kind, 0) + n
            pii_where.setdefault(kind, []).extend(formatted.pii_where.get(kind, [])[:5])
        done += formatted.n
        progress(f"wrote {done:,}/{n_kept:,} episodes")
    files = writer.close(tuple(request.formats))
    if "rft" in request.formats and (out / "rft").is_dir():
        (out / "rft" / "grader.json").write_bytes(orjson.dumps(RFT_GRADER, option=orjson.OPT_INDENT_2))

    progress("checking the export (leakage, PII, splits)")
    if checks_imported is not None:
        checks_imported.join()
    # imported here, not at the top: formatting processes re-import the caller's main module, and when that imports
    # this module, Great Expectations' import of pyspark.sql.connect would exit them (pyspark takes a forkserver
    # child's main module for a doctest run); see docs/exports.md
    from quality.runner import check
    from quality.suites import exports as exports_suite

    leak = leakage(((s, g, p) for _, s, g, p in index), frozen)
    report = check(settings, exports_suite(tuple(settings.export_ratios) + ("holdout",)), pa.table({
        "episode_id": pa.array([r[0] for r in index], pa.string()),
        "split": pa.array([r[1] for r in index], pa.string()),
        "group_hash": pa.array([r[2] for r in index], pa.string()),
        "prompt_digest": pa.array([r[3] for r in index], pa.string()),
        "frozen_holdout": pa.array([r[2] in frozen for r in index], pa.bool_()),
        "pii_values": pa.array([pii_episodes.get(r[0], 0) for r in index], pa.int64()),
    }))
    policies = sorted(r[0] for r in con.execute("SELECT DISTINCT policy_version FROM kept").fetchall())
    # the data files were hashed as they were written; the rest (the RFT grader) is hashed here
    files = {**files, **{p.relative_to(out).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size}
                         for p in out.rglob("*") if p.is_file() and p.name != MANIFEST
                         and p.relative_to(out).as_posix() not in files}}
    files = dict(sorted(files.items()))
    manifest = {
        "name": request.name,
        "trajlake_manifest": 1,
        "request": {"formats": list(request.formats), "since": str(request.since), "until": str(request.until),
                    "margin_days": margin},
        "sources": versions,
        "reward_version": spec.version,
        "reward_spec_sha256": reward_spec_digest(spec),
        "privacy": {"policy_version": POLICY_VERSION, "row_policies": policies},
        "splits": {"group_by": settings.export_group_by, "ratios": settings.export_ratios,
                   "holdout_share": settings.export_holdout_share, "salt": settings.export_split_salt,
                   "frozen_holdout_groups": len(frozen),
                   "near_duplicate_threshold": settings.export_near_duplicate_threshold,
                   "near_duplicate_method": NEAR_DUPLICATE_METHOD},
        "counts": {
            "episodes": {"in_window": total, "unscored": unscored, "stale_scores": stale,
                         "near_duplicates_removed": len(dropped),
                         "formatted": n_kept, "exported": len(index)},
            "exact_duplicates_removed": writer.exact_duplicates,
            "rows": writer.rows,
        },
        "pii_scan": {"detectors": ["email", "phone", "us_ssn", "card_number"]
                     + (["ground_truth"] if settings.pii_ground_truth else []),
                     "ground_truth": str(settings.pii_ground_truth) if settings.pii_ground_truth else None,
                     "scope": "every message content, tool-call argument, output, final value and grader "
                              "reference of the exported episodes",
                     "hits": pii_hits},
        "leakage": {"ok": leak.ok, "summary": leak.summary()},
        "files": files,
    }
    if not report.success or pii_hits:
        blocking = report.blocking(request.allow_failed_checks)
        manifest["quality"] = report.as_manifest()
        if any(f.critical for f in blocking) or pii_hits:
            where = "; ".join(f"{n} {kind} value(s), e.g. in episode {', '.join(pii_where[kind][:3])}"
                              for kind, n in sorted(pii_hits.items()))
            raise ExportFailed(f"the PII scan found personal data ({where}); nothing was published (no override "
                               "publishes personal data). Fix the scrubber policy (privacy/policy.py) and re-export\n"
                               + report.summary(), manifest)
        if blocking:
            reason = f"the leakage check failed: {leak.summary()}" if not leak.ok else "the export's quality suite failed"
            raise ExportFailed(f"{reason}; nothing was published. Fix the cause, or publish anyway with "
                               f"--allow-failed-checks (recorded in the manifest)\n{report.summary()}", manifest)
        report = replace(report, overridden=True)
        log.warning("exporting despite failed checks (--allow-failed-checks):\n%s", report.summary())
        progress("WARNING: publishing despite failed checks (--allow-failed-checks); the manifest records it")
    manifest["quality"] = report.as_manifest()
    new_holdout = [r[0] for r in con.execute(
        "SELECT DISTINCT group_hash FROM _splits WHERE split = 'holdout' AND group_hash NOT IN "
        "(SELECT group_hash FROM _frozen) ORDER BY group_hash").fetchall()]
    return manifest, new_holdout


def _next_version(root: Path) -> str:
    taken = [int(p.name[1:]) for p in root.glob("v[0-9]*") if p.name[1:].isdigit()] if root.is_dir() else []
    return f"v{max(taken, default=0) + 1:04d}"


# what the frozen holdout was registered under, recorded in each registration's commit (delta-rs refuses custom
# table properties): the split salt's sha256, the grouping, and the largest holdout share used
_POLICY_SALT, _POLICY_GROUP_BY, _POLICY_SHARE = ("trajlake.split_salt_sha256", "trajlake.group_by",
                                                 "trajlake.max_holdout_share")


def registry_policy(settings: Settings) -> dict[str, str] | None:
    """The split policy the holdout registry's latest registration recorded; None for a registry without one."""
    dt = open_table(settings, EXPORT_HOLDOUT)
    if dt is None:
        return None
    for commit in dt.history():  # newest first
        if _POLICY_SALT in commit:
            return {k: str(commit[k]) for k in (_POLICY_SALT, _POLICY_GROUP_BY, _POLICY_SHARE) if k in commit}
    return None


def check_registry_policy(settings: Settings) -> None:
    """Refuse an export whose split settings would thaw the frozen holdout.

    The registry holds salted hashes of one grouping's keys. Another salt hashes every group differently, and
    another grouping reads none of them: either way the frozen groups' episodes would land in train. A larger
    holdout share moves groups that earlier exports put in train into the holdout, so a model trained on those
    exports would be evaluated on them. A smaller share is fine: the registered groups stay in the holdout."""
    policy = registry_policy(settings)
    if policy is None:
        return
    where = table_path(settings, EXPORT_HOLDOUT)
    fresh = (f"or, if earlier exports' holdouts no longer need to bind, start a new registry by removing {where} "
             "(deliberately: the models trained on them lose their clean evaluation set)")
    if policy.get(_POLICY_SALT) != hashlib.sha256(settings.export_split_salt.encode()).hexdigest():
        raise ExportFailed("TRAJLAKE_EXPORT_SPLIT_SALT differs from the one the frozen holdout was registered with: "
                           "its groups would hash differently and leave the holdout. Set the salt of the earlier "
                           f"exports (their manifests' settings.salt), {fresh}")
    if policy.get(_POLICY_GROUP_BY, settings.export_group_by) != settings.export_group_by:
        raise ExportFailed(f"TRAJLAKE_EXPORT_GROUP_BY={settings.export_group_by}, but the frozen holdout holds "
                           f"groups by {policy[_POLICY_GROUP_BY]}: none of them would be read, and their episodes "
                           f"would land in train. Set TRAJLAKE_EXPORT_GROUP_BY={policy[_POLICY_GROUP_BY]}, {fresh}")
    share = float(policy.get(_POLICY_SHARE, "1"))
    if settings.export_holdout_share > share + 1e-12:
        raise ExportFailed(f"TRAJLAKE_EXPORT_HOLDOUT_SHARE={settings.export_holdout_share} is above the {share} earlier "
                           "exports used: groups they put in train would move into the holdout, where the models "
                           f"trained on them would be evaluated. Keep it at {share} or below, {fresh}")


def _register_holdout(settings: Settings, groups: Sequence[str], name: str, version: str) -> None:
    if not groups:
        return
    ensure_table(settings, EXPORT_HOLDOUT)
    now = datetime.now(timezone.utc)
    batch = pa.Table.from_pylist([{"group_by": settings.export_group_by, "group_hash": g, "export_name": name,
                                   "export_version": version, "registered_at": now} for g in groups],
                                 schema=EXPORT_HOLDOUT.schema)
    earlier = registry_policy(settings) or {}
    policy = {_POLICY_SALT: hashlib.sha256(settings.export_split_salt.encode()).hexdigest(),
              _POLICY_GROUP_BY: settings.export_group_by,
              _POLICY_SHARE: repr(max(settings.export_holdout_share, float(earlier.get(_POLICY_SHARE, "0"))))}
    # MERGE on the declared keys: a group registered by a concurrent export is not registered twice
    from deltalake import CommitProperties, DeltaTable
    (DeltaTable(str(table_path(settings, EXPORT_HOLDOUT)))
     .merge(batch, "t.group_by = s.group_by AND t.group_hash = s.group_hash", source_alias="s", target_alias="t",
            commit_properties=CommitProperties(custom_metadata=policy))
     .when_not_matched_insert_all().execute())


def _keep_only_the_report(failed_dir: Path, exc: ExportFailed) -> None:
    """A run the PII scan refused holds personal data: its rows go, and what was refused and why stays.

    The other refusals (leakage, a quality gate) keep their files for inspection; these files are the very data
    that must not exist past the scrubber, and `trajlake erase` finds their rows only by an id they may not hold."""
    for path in sorted(failed_dir.iterdir()):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    report = {"refused": str(exc).splitlines()[0], "pii_scan": exc.manifest["pii_scan"],
              "quality": exc.manifest.get("quality"), "request": exc.manifest.get("request"),
              "files_deleted": sorted(exc.manifest.get("files") or {})}
    (failed_dir / "REFUSED.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")


def run(settings: Settings, request: ExportRequest, progress: Progress = lambda _: None) -> ExportResult:
    """Export into <lake>/exports/<name>/<vNNNN>/ atomically (a new version per run), then freeze the holdout
    groups it introduced. A failed check publishes nothing; its files stay in a `.failed-…` directory.

    Holds the erase lock, shared, from the first read to the published directory: an erase waits for the export,
    which could otherwise publish rows from files the erase had just vacuumed, after it had scanned the exports."""
    request.check()  # before anything is made on disk, the lock file included
    with outside_erase(settings.lake, progress):
        return _run(settings, request, progress)


def _run(settings: Settings, request: ExportRequest, progress: Progress) -> ExportResult:
    check_registry_policy(settings)
    root = settings.lake / "exports" / request.name
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".building-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()

    def failed() -> Path:
        return tmp.rename(root / f".failed-{tmp.name.split('-')[-1]}")

    try:
        manifest, new_holdout = build(settings, request, tmp, progress)
    except ExportFailed as exc:
        kept = failed()
        if exc.manifest and exc.manifest.get("pii_scan", {}).get("hits"):
            _keep_only_the_report(kept, exc)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    while True:
        # reserve the version: mkdir is atomic, so a concurrent export of the same name takes the next one
        version = _next_version(root)
        final = root / version
        try:
            final.mkdir()
            break
        except FileExistsError:
            continue
    # the holdout is frozen before the export is published: an export whose holdout groups were not registered
    # could be followed by one that trains on them
    try:
        _register_holdout(settings, new_holdout, request.name, version)
    except Exception as exc:  # noqa: BLE001 — whatever broke the registry write, nothing is published
        final.rmdir()
        kept = failed()
        raise ExportFailed(f"registering the {len(new_holdout)} new holdout group(s) in "
                           f"{table_path(settings, EXPORT_HOLDOUT)} failed ({type(exc).__name__}: {exc}); nothing "
                           f"was published (the files are in {kept}). Re-run the export") from None
    manifest = {**manifest, "version": version, "created_at": datetime.now(timezone.utc).isoformat(),
                "holdout_groups_registered": len(new_holdout)}
    (tmp / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    os.replace(tmp, final)  # onto the empty reserved directory: atomic
    (root / "LATEST").write_text(version + "\n")
    progress(f"published {final}")
    return ExportResult(final, manifest)


def load_manifest(path: Path) -> dict[str, Any]:
    path = path / MANIFEST if path.is_dir() else path
    try:
        manifest = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ExportFailed(f"no manifest at {path}") from None
    except orjson.JSONDecodeError as exc:
        raise ExportFailed(f"{path} is not a manifest (invalid JSON: {exc})") from None
    if not isinstance(manifest, dict) or manifest.get("trajlake_manifest") != 1:
        raise ExportFailed(f"{path} is not a trajlake export manifest")
    # what reproducing reads: a manifest cut short or edited ended in a KeyError (found in review)
    shape = {"name": str, "request": dict, "sources": dict, "reward_version": str, "splits": dict, "files": dict}
    parts = {"request": ("formats", "since", "until"),
             "splits": ("group_by", "ratios", "holdout_share", "salt", "near_duplicate_threshold")}
    wrong = [k for k, kind in shape.items() if not isinstance(manifest.get(k), kind)]
    wrong += [f"{k}.{f}" for k, fields in parts.items() if isinstance(manifest.get(k), dict)
              for f in fields if f not in manifest[k]]
    if wrong:
        raise ExportFailed(f"{path} is not a complete trajlake export manifest (missing or malformed: "
                           f"{', '.join(wrong)}); use the manifest.json the export wrote, unedited")
    return manifest


def reproduce(settings: Settings, manifest_path: Path, out: Path, progress: Progress = lambda _: None) -> dict[str, Any]:
    """Rebuild an export from its manifest (the same source versions, reward spec, split settings and filters)
    into `out`, and verify every file's sha256 against the manifest. Registers nothing."""
    m = load_manifest(manifest_path)
    mismatched = {k: (m["splits"][k], getattr(settings, f"export_{k}"))
                  for k in ("group_by", "ratios", "holdout_share", "near_duplicate_threshold")
                  if m["splits"][k] != getattr(settings, f"export_{k}")}
    if m["splits"]["salt"] != settings.export_split_salt:
        mismatched["split_salt"] = ("(recorded)", "(set)")
    if mismatched:
        raise ExportFailed(f"the settings differ from the manifest's: {mismatched}; set the TRAJLAKE_EXPORT_* "
                           "variables to the manifest's values")
    req = m["request"]
    if "margin_days" in req and req["margin_days"] != settings.job_margin_days:
        raise ExportFailed(f"the export read events {req['margin_days']} day(s) around its window and "
                           f"TRAJLAKE_JOB_MARGIN_DAYS is {settings.job_margin_days} here: set "
                           f"TRAJLAKE_JOB_MARGIN_DAYS={req['margin_days']} to reproduce it")
    if "reward_spec_sha256" in m:
        try:
            here = reward_spec_digest(load_reward_spec(m["reward_version"]))
        except RewardSpecError as exc:
            raise ExportFailed(f"the export was scored under {m['reward_version']}, which cannot be loaded here: "
                               f"{exc}") from None
        if here != m["reward_spec_sha256"]:
            raise ExportFailed(f"{m['reward_version']} here has other numbers than the export was made with (its "
                               "sha256 differs from the manifest's reward_spec_sha256): a published spec must not "
                               "change; restore schemas/reward/" + m["reward_version"] + ".toml from version control")
    request = ExportRequest(m["name"], tuple(req["formats"]), date.fromisoformat(req["since"]),
                            date.fromisoformat(req["until"]), m["reward_version"],
                            # None too: a table absent then is read as empty, though it may exist now
                            dict(m["sources"]),
                            allow_failed_checks=bool(m.get("quality", {}).get("overridden")))
    if out.exists() and any(out.iterdir()):
        raise ExportFailed(f"{out} is not empty; pass --out with a new directory")
    out.mkdir(parents=True, exist_ok=True)
    with outside_erase(settings.lake, progress):  # it reads the pinned versions, the erased user's rows among them
        rebuilt, _ = build(settings, request, out, progress)
    # an export made before empty splits got their files lists none of them: an empty file it lacks is no difference
    rebuilt_files = {f: v for f, v in rebuilt["files"].items() if f in m["files"] or v.get("rows", 1)}
    differ = sorted(set(m["files"]) ^ set(rebuilt_files)) + sorted(
        f for f in set(m["files"]) & set(rebuilt_files) if m["files"][f]["sha256"] != rebuilt_files[f]["sha256"])
    if differ:
        made_with = m["splits"].get("near_duplicate_method", "minhash-word3-duckdb-v1")  # before it was recorded
        why = "" if made_with == NEAR_DUPLICATE_METHOD else (
            f"; the manifest's export used near-duplicate method {made_with!r} and this version uses "
            f"{NEAR_DUPLICATE_METHOD!r}, which can remove different episodes: reproduce it with the trajlake "
            "version that made it")
        raise ExportFailed(f"the rebuilt export differs from the manifest in {', '.join(differ)}{why}")
    (out / MANIFEST).write_bytes(orjson.dumps({**m, "reproduced_at": datetime.now(timezone.utc).isoformat()},
                                              option=orjson.OPT_INDENT_2) + b"\n")
    return rebuilt
