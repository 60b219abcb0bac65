"""Readers for training jobs, no Spark needed: lake tables at a pinned Delta version and export splits, as Arrow,
pandas, a Hugging Face `datasets.Dataset`, or a torch IterableDataset."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import duckdb
import orjson
import pyarrow as pa

from lake.readers import read_table, table_dataset
from lake.tables import spec
from schemas.settings import Settings
from schemas.tables import TableSpec


def table_arrow(settings: Settings, table: TableSpec | str, version: int | None = None,
                columns: list[str] | None = None, latest: bool = False) -> pa.Table:
    """A lake table at `version` (latest when None) as Arrow.

    `latest`: of a table that keeps revisions (silver/steps, silver/episodes: `revision` in its keys), only each
    key's latest revision, in key order; otherwise every revision is a row (1,431 rows for 1,380 steps of the
    τ-bench lake). A key written twice at one revision (a late event after its task was forgotten,
    docs/design.md) keeps the row closed later."""
    t = spec(table) if isinstance(table, str) else table
    if not latest:
        return read_table(settings, t, version, columns=columns)
    if "revision" not in t.keys:
        raise ValueError(f"{t.id} keeps one row per key (no revisions): read it without latest=True")
    key = [k for k in t.keys if k != "revision"]
    data = read_table(settings, t, version)
    con = duckdb.connect()
    con.register("t", data)
    ident = lambda c: '"' + c.replace('"', '""') + '"'  # noqa: E731
    keys = ", ".join(map(ident, key))
    picked = con.sql(f"SELECT * FROM t QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY revision DESC, "
                     f"closed_at DESC) = 1 ORDER BY {keys}").to_arrow_table().cast(data.schema)
    return picked.select(columns) if columns is not None else picked


def table_pandas(settings: Settings, table: TableSpec | str, version: int | None = None,
                 columns: list[str] | None = None, latest: bool = False):
    return table_arrow(settings, table, version, columns, latest).to_pandas()


def table_hf(settings: Settings, table: TableSpec | str, version: int | None = None,
             columns: list[str] | None = None, latest: bool = False):
    """A lake table at `version` as a Hugging Face `datasets.Dataset` (in memory, from Arrow without a copy)."""
    import datasets

    data = table_arrow(settings, table, version, columns, latest)
    if any(c.num_chunks == 0 for c in data.columns):
        # a table (or version) without files reads as columns of no chunks, which `datasets` cannot cast
        # ("cannot construct ChunkedArray from empty vector"): give every column one empty chunk
        data = data.schema.empty_table()
    return datasets.Dataset(data)


def split_path(export: Path, fmt: str, split: str) -> Path:
    """The JSON Lines file of one format and split of an export version directory (or of its LATEST version when
    given the export's own directory)."""
    export = Path(export)
    if (export / "LATEST").is_file():
        export = export / (export / "LATEST").read_text().strip()
    path = export / fmt / f"{split}.jsonl"
    if not path.is_file():
        have = sorted(p.relative_to(export).as_posix() for p in export.glob("*/*.jsonl"))
        raise FileNotFoundError(f"no {fmt}/{split}.jsonl in {export}; it has {', '.join(have) or 'no files'}")
    return path


def export_split(export: Path, fmt: str, split: str):
    """One split of an export as a Hugging Face `datasets.Dataset`, loaded by `datasets`' own JSON builder (the
    way a trainer loads it), held in memory so nothing is cached beside the lake."""
    import tempfile

    import datasets

    path = split_path(export, fmt, split)
    if path.stat().st_size == 0:  # a split no row went to: `datasets`' JSON builder raises StopIteration on it
        return datasets.Dataset.from_dict({})
    with tempfile.TemporaryDirectory(prefix="trajlake-hf-") as cache:
        return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=cache,
                                     keep_in_memory=True)


def iter_split(export: Path, fmt: str, split: str) -> Iterator[dict[str, Any]]:
    """The rows of one split, streamed (constant memory)."""
    with open(split_path(export, fmt, split), "rb") as f:
        for line in f:
            yield orjson.loads(line)


def torch_split(export: Path, fmt: str, split: str):
    """One split as a `torch.utils.data.IterableDataset` of row dicts (`lake.torch_split.TorchSplit`: each
    DataLoader worker reads its own share of the lines). Needs torch, which trajlake does not install."""
    try:
        from lake.torch_split import TorchSplit
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith("torch"):
            raise
        raise ImportError("torch_split needs PyTorch: pip install torch (trajlake does not depend on it)") from None
    return TorchSplit(split_path(export, fmt, split))


__all__ = ["table_arrow", "table_pandas", "table_hf", "table_dataset", "export_split", "iter_split", "torch_split",
           "split_path"]
