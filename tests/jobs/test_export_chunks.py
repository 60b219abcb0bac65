"""How the export divides its work: the sorted fragment stream cut into chunks of episodes, each episode's events
and steps grouped back into JSON lists, chunks and formatted rows passed between processes as files."""
from __future__ import annotations

import hashlib
import random
from array import array

import orjson
import pyarrow as pa
import pytest

from jobs.export import (_FRAGMENTS_SCHEMA, _Chunk, _Formatted, _FormatJob, _Part, _Writer, _formatted, _spec,
                         episode_chunks)

pytestmark = pytest.mark.unit


def lake(n_episodes: int, seed: int) -> tuple[pa.Table, list[dict], dict[int, tuple[list, list]]]:
    """`kept` with n episodes, their fragments sorted by (rank, kind) (each followed by a comma, as the fragment
    query makes them), and what each episode's lists must hold. Some episodes have no events, no steps or nothing
    at all; some fragments hold non-ASCII text."""
    rnd = random.Random(seed)
    kept = pa.table({"episode_id": [f"e{i:05d}" for i in range(n_episodes)]})
    rows, want = [], {}
    for r in range(n_episodes):
        events = [{"t": "user_message", "i": k, "b": rnd.choice(["", "café ☕", "日本語", "a,b]"])}
                  for k in range(rnd.choice([0, 1, 3, 9]))]
        steps = [{"step_index": k} for k in range(rnd.choice([0, 0, 2, 5]))]
        want[r] = (events, steps)
        rows += [{"rank": r, "kind": 0, "fragment": orjson.dumps(e).decode() + ","} for e in events]
        rows += [{"rank": r, "kind": 1, "fragment": orjson.dumps(s).decode() + ","} for s in steps]
    return kept, rows, want


def reader(rows: list[dict], batch: int) -> pa.RecordBatchReader:
    table = pa.Table.from_pylist(rows, schema=_FRAGMENTS_SCHEMA)
    return pa.RecordBatchReader.from_batches(_FRAGMENTS_SCHEMA, table.to_batches(max_chunksize=batch))


@pytest.mark.parametrize("size,batch", [(1, 1), (3, 7), (16, 5), (16, 1000), (1000, 4)])
def test_every_episode_gets_exactly_its_events_and_steps_in_order(size, batch):
    kept, rows, want = lake(101, seed=size * batch)
    chunks = list(episode_chunks(kept, reader(rows, batch), size))
    assert [c.first for c in chunks] == list(range(0, 101, size))
    got = {}
    for c in chunks:
        assert c.episodes.column("episode_id").to_pylist() == [f"e{i:05d}" for i in range(c.first, c.first + c.episodes.num_rows)]
        for k, (events, steps) in enumerate(c.lists()):
            got[c.first + k] = (orjson.loads(events), orjson.loads(steps))
    assert got == want


def test_a_lake_whose_last_episodes_have_nothing_still_yields_them():
    kept = pa.table({"episode_id": ["a", "b", "c", "d", "e"]})
    rows = [{"rank": 0, "kind": 1, "fragment": "{},"}]
    chunks = list(episode_chunks(kept, reader(rows, 10), 2))
    assert [(c.first, c.episodes.num_rows) for c in chunks] == [(0, 2), (2, 2), (4, 1)]
    assert [list(c.lists()) for c in chunks] == [[(b"[]", b"[{}]"), (b"[]", b"[]")], [(b"[]", b"[]")] * 2,
                                                 [(b"[]", b"[]")]]


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string()])
def test_lists_read_a_sliced_column_of_either_width(kind):
    """A chunk's fragments are slices of the query's batches (a nonzero offset into their buffers), possibly
    several of them, in either Arrow string type."""
    kept, rows, want = lake(60, seed=5)
    schema = pa.schema([("rank", pa.int64()), ("kind", pa.uint8()), ("fragment", kind)])
    batches = pa.Table.from_pylist(rows, schema=schema).to_batches(max_chunksize=7)
    chunks = list(episode_chunks(kept, pa.RecordBatchReader.from_batches(schema, batches), 9))
    assert any(c.fragments.column(2).num_chunks > 1 for c in chunks)
    got = {c.first + k: (orjson.loads(e), orjson.loads(s)) for c in chunks for k, (e, s) in enumerate(c.lists())}
    assert got == want


def test_a_saved_chunk_holds_only_its_rows_and_loads_back_equal(tmp_path):
    """A chunk is slices of big tables; saving writes the slices, not the buffers behind them (which pickling a
    slice would), and loading removes the files."""
    kept, rows, _ = lake(2000, seed=1)
    chunk = next(c for c in episode_chunks(kept, reader(rows, 100_000), 10) if c.first == 990)
    stem = tmp_path / "990"
    chunk.save(stem)
    on_disk = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert on_disk < 20_000 < pa.Table.from_pylist(rows, schema=_FRAGMENTS_SCHEMA).nbytes
    back = _Chunk.load(990, stem)
    assert list(tmp_path.iterdir()) == []
    assert back.episodes.equals(chunk.episodes) and back.fragments.equals(chunk.fragments)
    assert list(back.lists()) == list(chunk.lists())


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_rows_handed_over_in_a_file_are_written_and_the_file_removed(tmp_path, kernel_copy):
    """As the export hands them over (the open file: copied in the kernel), or as a mapped view alone."""
    lines = [b'{"a":1}\n', b'{"b":2}\n', b'{"c":3}\n']
    rows_file = tmp_path / "0.rows"
    rows_file.write_bytes(b"".join(lines))
    digest = [bytes([i]) * 16 for i in range(3)]
    parts = {"sft": {"train": _Part(b"", array("Q", [8, 16]), digest[0] + digest[1], array("I", [0, 1]),
                                    array("I", [0, 1]), at=0),
                     "test": _Part(b"", array("Q", [8]), digest[2], array("I", [2]), array("I", [2]), at=16)}}
    formatted = _Formatted(3, parts, [], {}, {}, {}, rows_file=str(rows_file))
    w = _Writer(tmp_path / "out")
    with formatted.mapped():
        assert formatted.source is not None
        for fmt, p in formatted.parts.items():
            assert w.write(fmt, p, formatted.source if kernel_copy else None) == {0, 1, 2}
        # a later batch without a file behind it goes to the same files, after what was copied
        assert w.write("sft", {"train": _Part(b'{"d":4}\n', array("Q", [8]), bytes([9]) * 16, array("I", [0]),
                                              array("I", [0]))}) == {0}
    files = w.close()
    assert not rows_file.exists()
    assert (tmp_path / "out/sft/train.jsonl").read_bytes() == b'{"a":1}\n{"b":2}\n{"d":4}\n'
    assert (tmp_path / "out/sft/test.jsonl").read_bytes() == b'{"c":3}\n'
    assert files["sft/train.jsonl"] == {"sha256": hashlib.sha256(b'{"a":1}\n{"b":2}\n{"d":4}\n').hexdigest(),
                                        "bytes": 24, "rows": 3}


@pytest.mark.timeout(180)
def test_a_formatting_process_that_fails_ends_the_export_with_its_error(tmp_path):
    """A chunk the formatting processes cannot format (these episodes lack every column but their id) raises the
    worker's error in the parent, with more chunks waiting than the feeder may hold in flight: before the fix,
    leaving the pool joined a feeder thread blocked on its slot, and the export hung forever."""
    kept, rows, _ = lake(300, seed=2)
    job = _FormatJob(("kto",), _spec("reward-v2").exports, "reward-v2", None, tmp_path / "scratch")
    with pytest.raises(KeyError):
        for _ in _formatted(episode_chunks(kept, reader(rows, 50), 10), job, 2, 10**6):
            pass
    assert not (tmp_path / "scratch").exists()


@pytest.mark.timeout(180)
def test_formatting_processes_that_cannot_start_fail_the_export_cleanly(tmp_path):
    """A pool whose initializer fails (here: a ground-truth file that is not there) is an ExportFailed naming the
    fix, not a hang (multiprocessing.Pool restarts such workers forever)."""
    from jobs.export import ExportFailed

    kept, rows, _ = lake(300, seed=3)
    job = _FormatJob(("kto",), _spec("reward-v2").exports, "reward-v2", tmp_path / "no-users.json",
                     tmp_path / "scratch")
    with pytest.raises(ExportFailed, match="could not start.*TRAJLAKE_EXPORT_WORKERS"):
        for _ in _formatted(episode_chunks(kept, reader(rows, 50), 10), job, 2, 10**6):
            pass
    assert not (tmp_path / "scratch").exists()


@pytest.mark.timeout(180)
def test_a_formatting_process_killed_mid_export_fails_it_cleanly(tmp_path):
    """The OOM killer's SIGKILL of a formatting process ends the export with ExportFailed (a Pool would wait for
    the lost batch forever). The processes are held in their initializer by a ground-truth "file" that is a FIFO
    no one writes to, so they are certainly alive and busy when killed."""
    import os
    import signal
    import threading

    import psutil

    from jobs.export import ExportFailed
    from tests.conftest import wait_until

    fifo = tmp_path / "users.fifo"
    os.mkfifo(fifo)
    kept, rows, _ = lake(300, seed=4)
    job = _FormatJob(("kto",), _spec("reward-v2").exports, "reward-v2", fifo, tmp_path / "scratch")
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}

    def workers() -> list:
        # new processes forked by the forkserver (which an earlier test of the session may have started already)
        out = []
        for p in me.children(recursive=True):
            try:
                if p.pid not in before and p.ppid() != me.pid and "forkserver" in " ".join(p.cmdline()):
                    out.append(p)
            except psutil.NoSuchProcess:
                continue
        return out

    killed = []

    def kill_one() -> None:
        try:
            wait_until(lambda: workers(), 60, interval=0.05, message="the formatting processes")
            victim = workers()[0]
            victim.send_signal(signal.SIGKILL)
            killed.append(victim.pid)
        except BaseException as exc:  # noqa: BLE001 — reported by the main thread's assertion below
            killed.append(exc)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    with pytest.raises(ExportFailed, match="a formatting process died"):
        for _ in _formatted(episode_chunks(kept, reader(rows, 50), 10), job, 2, 10**6):
            pass
    killer.join()
    assert len(killed) == 1 and isinstance(killed[0], int), killed
    assert not (tmp_path / "scratch").exists()
    wait_until(lambda: not workers(), 30, interval=0.1, message="the other formatting process to end")
