"""The export-split readers: split_path, iter_split, and torch_split under real PyTorch in DataLoader workers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import orjson
import pytest

from lake.training import iter_split, split_path, torch_split
from tests.conftest import REPO
from tests.machine_cache import machine_cache

REQUIREMENTS = REPO / "infra" / "torch" / "requirements.txt"

ROWS = [{"messages": [{"role": "user", "content": f"Change my flight {i}, s'il vous plaît ✈"},
                      {"role": "assistant", "content": None,
                       "tool_calls": [{"id": f"call_{i}", "type": "function",
                                       "function": {"name": "update_reservation", "arguments": '{"seat": "12A"}'}}]},
                      {"role": "tool", "tool_call_id": f"call_{i}", "content": "ok"},
                      {"role": "assistant", "content": f"Done: reservation {i} is on seat 12A."}],
         "tools": [{"type": "function", "function": {"name": "update_reservation", "parameters": {
             "type": "object", "properties": {"seat": {"type": "string"}}}}}],
         "split": "train", "episode_id": f"ep-{i:03d}", "user_id": f"usr-{i % 3}", "reward_version": "reward-v2",
         "reward": 0.5 + i / 16} for i in range(9)]  # 9 rows: two workers get 5 and 4


def write_split(version: Path, fmt: str, split: str, rows: list[dict]) -> Path:
    path = version / fmt / f"{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


@pytest.fixture
def export(tmp_path) -> Path:
    """An export directory as `trajlake export` leaves it: v0001 with sft train and validation, LATEST naming it."""
    root = tmp_path / "exports" / "weekly"
    write_split(root / "v0001", "sft", "train", ROWS)
    write_split(root / "v0001", "sft", "validation", ROWS[:1])
    (root / "LATEST").write_text("v0001\n")
    return root


@pytest.mark.unit
def test_split_path_follows_latest_or_takes_a_version_directory(export):
    expected = export / "v0001" / "sft" / "train.jsonl"
    assert split_path(export, "sft", "train") == expected
    assert split_path(str(export / "v0001"), "sft", "train") == expected
    write_split(export / "v0002", "sft", "train", ROWS[:2])
    (export / "LATEST").write_text("v0002\n")
    assert split_path(export, "sft", "train") == export / "v0002" / "sft" / "train.jsonl"


@pytest.mark.unit
def test_a_missing_split_or_format_names_what_the_export_has(export, tmp_path):
    version = export / "v0001"
    with pytest.raises(FileNotFoundError) as exc:
        split_path(export, "sft", "holdout")
    assert str(exc.value) == f"no sft/holdout.jsonl in {version}; it has sft/train.jsonl, sft/validation.jsonl"
    with pytest.raises(FileNotFoundError, match=r"no dpo/train\.jsonl in .*; it has sft/train\.jsonl, sft/valid"):
        split_path(export, "dpo", "train")
    with pytest.raises(FileNotFoundError, match=r"no sft/train\.jsonl in .*; it has no files$"):
        split_path(tmp_path / "empty", "sft", "train")


@pytest.mark.unit
def test_iter_split_streams_the_rows_in_file_order(export):
    rows = iter_split(export, "sft", "train")
    assert next(rows) == ROWS[0]
    assert [ROWS[0], *rows] == ROWS
    assert list(iter_split(export / "v0001", "sft", "validation")) == ROWS[:1]


@pytest.mark.unit
def test_torch_split_without_torch_says_how_to_install_it(export, monkeypatch):
    # None in sys.modules makes `import torch` fail as if it were not installed, whether or not it is
    for name in ("torch", "torch.utils", "torch.utils.data"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"torch_split needs PyTorch: pip install torch \(trajlake does not depend"):
        torch_split(export, "sft", "train")


LOAD = r"""
import json, sys
sys.path.append(sys.argv[2])  # after the venv's site-packages: trajlake's pins win, only torch's extras come from here
import filelock, fsspec, jinja2, numpy, orjson, typing_extensions
import torch
from torch.utils.data import DataLoader
from lake.training import torch_split

out = {"torch": torch.__version__, "files": {m.__name__: m.__file__ for m in
                                             (torch, filelock, fsspec, jinja2, numpy, typing_extensions)}, "runs": {}}
for name, kw in {"0 workers": {"num_workers": 0}, "2 workers": {"num_workers": 2},
                 "2 workers, spawn": {"num_workers": 2, "multiprocessing_context": "spawn"}}.items():
    try:
        rows = list(DataLoader(torch_split(sys.argv[1], "sft", "train"), batch_size=None, **kw))
        out["runs"][name] = {"types": sorted({type(r).__name__ for r in rows}), "rows": rows}
    except Exception as e:
        out["runs"][name] = {"error": f"{type(e).__name__}: {e}"}
print("RESULT " + json.dumps(out))
"""


def install_torch(target: Path) -> None:
    # no pip cache: the target is the cache, and the wheels would be another ~3 GB beside it; no conflict
    # warnings: pip compares the target's copies of shared packages (fsspec…) with the venv's pins, but the venv's
    # copies shadow them (the test checks that)
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install", "--no-cache-dir",
                    "--no-warn-conflicts", "--target", str(target), "-r", str(REQUIREMENTS)], check=True, timeout=1800)


@pytest.fixture(scope="module")
def torch_dir():
    """PyPI's torch (infra/torch/requirements.txt) installed with `pip install --target` into the per-machine
    cache (tests/machine_cache.py), so every clone on the machine shares one build."""
    with machine_cache("torch", REQUIREMENTS, install_torch) as target:
        yield target


@pytest.mark.integration
def test_torch_split_yields_every_row_once_in_dataloader_workers(export, torch_dir, tmp_path):
    """A DataLoader over torch_split under real PyTorch 2.15 (the trajlake venv's Python, torch appended to its
    sys.path from the cache): every row exactly once, as the dict on its line, with 0 workers, 2 forked workers,
    and 2 spawned workers (spawn pickles the dataset). The first build of the cache (~5.6 GB, torch and its CUDA
    wheels) takes about 1–2 min; it is a one-time cost per machine, and later runs take seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "TRAJLAKE_"))}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run([sys.executable, "-P", "-c", LOAD, str(export), str(torch_dir)], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(next(x for x in r.stdout.splitlines() if x.startswith("RESULT ")).removeprefix("RESULT "))

    assert got["torch"].startswith("2.15.0")
    site = sysconfig.get_paths()["purelib"]
    assert Path(got["files"].pop("torch")).is_relative_to(torch_dir)
    assert all(Path(f).is_relative_to(site) for f in got["files"].values()), got["files"]

    by_id = sorted(ROWS, key=lambda r: r["episode_id"])
    for name, run in got["runs"].items():
        assert "error" not in run, f"{name}: {run.get('error')}"
        assert run["types"] == ["dict"], name
        assert sorted(r["episode_id"] for r in run["rows"]) == [r["episode_id"] for r in by_id], name
        assert sorted(run["rows"], key=lambda r: r["episode_id"]) == by_id, name
    assert got["runs"]["0 workers"]["rows"] == ROWS


@pytest.mark.component
def test_table_hf_of_an_empty_or_missing_table_is_an_empty_dataset(lake_settings):
    """A table without files reads as columns of no chunks, which `datasets` refused ("cannot construct
    ChunkedArray from empty vector"); it is an empty Dataset with the declared columns."""
    from lake.tables import ensure_table
    from lake.training import table_hf
    from schemas.tables import GOLD_EPISODE_SCORES, SILVER_STEPS

    ensure_table(lake_settings, SILVER_STEPS)
    for table in (SILVER_STEPS, GOLD_EPISODE_SCORES):   # created empty; never created
        ds = table_hf(lake_settings, table)
        assert len(ds) == 0 and set(ds.column_names) == {f.name for f in table.schema}


@pytest.mark.component
def test_an_empty_split_reads_as_no_rows(export):
    """An export writes every split of each format, empty when no row went to it; `datasets`' JSON builder raised
    StopIteration on such a file."""
    from lake.training import export_split

    write_split(export / "v0001", "sft", "holdout", [])
    assert export_split(export, "sft", "holdout").num_rows == 0
    assert list(iter_split(export, "sft", "holdout")) == []


@pytest.mark.component
def test_table_arrow_latest_keeps_each_keys_latest_revision(lake_settings):
    """Silver keeps every revision; a training job reading it wants the current rows (found in review: 1,431 rows
    for 1,380 steps of the τ-bench lake)."""
    import datetime as dt

    import pyarrow as pa
    from deltalake import write_deltalake

    from lake.tables import table_path
    from lake.training import table_arrow, table_pandas
    from schemas.tables import GOLD_EPISODE_SCORES, SILVER_STEPS

    t0 = dt.datetime(2026, 11, 2, 9, tzinfo=dt.timezone.utc)
    fill = {pa.string(): "x", pa.int64(): 0, pa.int32(): 0, pa.float64(): 0.0, pa.bool_(): False,
            pa.date32(): dt.date(2026, 11, 2)}
    base = {f.name: fill.get(f.type, t0) for f in SILVER_STEPS.schema}
    rows = [{**base, "step_id": "s/a", "revision": 0, "outcome": "accepted"},
            {**base, "step_id": "s/a", "revision": 1, "outcome": "undone"},
            {**base, "step_id": "s/b", "revision": 0, "outcome": "rejected"},
            # one key written twice at a revision (docs/design.md's late event): the later closed row is kept
            {**base, "step_id": "s/c", "revision": 0, "outcome": "ignored"},
            {**base, "step_id": "s/c", "revision": 0, "outcome": "edited", "closed_at": t0 + dt.timedelta(days=1)}]
    write_deltalake(str(table_path(lake_settings, SILVER_STEPS)), pa.Table.from_pylist(rows, SILVER_STEPS.schema),
                    partition_by=list(SILVER_STEPS.partition_by))
    assert table_arrow(lake_settings, SILVER_STEPS).num_rows == 5
    latest = table_arrow(lake_settings, "silver/steps", latest=True)
    assert latest.schema == SILVER_STEPS.schema
    assert list(zip(latest["step_id"].to_pylist(), latest["outcome"].to_pylist())) == [
        ("s/a", "undone"), ("s/b", "rejected"), ("s/c", "edited")]
    assert table_pandas(lake_settings, SILVER_STEPS, columns=["outcome"], latest=True)["outcome"].tolist() == [
        "undone", "rejected", "edited"]
    with pytest.raises(ValueError, match="one row per key"):
        table_arrow(lake_settings, GOLD_EPISODE_SCORES, latest=True)
