"""Readers for training jobs, no Spark needed: lake tables at a pinned Delta version and export splits, as Arrow,
pandas, a Hugging Face `datasets.Dataset`, or a torch IterableDataset."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Iterator

import orjson
import pyarrow as pa

from lake.readers import read_table, table_dataset
from schemas.settings import Settings
from schemas.tables import TableSpec


def table_arrow(settings: Settings, table: TableSpec | str, version: int | None = None,
                columns: list[str] | None = None) -> pa.Table:
    """A lake table at `version` (latest when None) as Arrow."""
    return read_table(settings, table, version, columns=columns)


def table_pandas(settings: Settings, table: TableSpec | str, version: int | None = None,
                 columns: list[str] | None = None):
    return table_arrow(settings, table, version, columns).to_pandas()


def table_hf(settings: Settings, table: TableSpec | str, version: int | None = None,
             columns: list[str] | None = None):
    """A lake table at `version` as a Hugging Face `datasets.Dataset` (in memory, from Arrow without a copy)."""
    import datasets

    return datasets.Dataset(table_arrow(settings, table, version, columns))


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
    with tempfile.TemporaryDirectory(prefix="trajlake-hf-") as cache:
        return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=cache,
                                     keep_in_memory=True)


def iter_split(export: Path, fmt: str, split: str) -> Iterator[dict[str, Any]]:
    """The rows of one split, streamed (constant memory)."""
    with open(split_path(export, fmt, split), "rb") as f:
        for line in f:
            yield orjson.loads(line)


def torch_split(export: Path, fmt: str, split: str):
    """One split as a `torch.utils.data.IterableDataset` of row dicts (each DataLoader worker reads its own
    share of the lines). Needs torch, which trajlake does not install."""
    try:
        import torch.utils.data  # noqa: F401
    except ImportError:
        raise ImportError("torch_split needs PyTorch: pip install torch (trajlake does not depend on it)") from None
    return _torch_split_class()(split_path(export, fmt, split))


@functools.cache
def _torch_split_class() -> type:
    """`TorchSplit`, torch_split's dataset class. It subclasses torch's IterableDataset, so it is defined on first
    use (torch is optional), yet is reachable as `lake.training.TorchSplit` (the module's `__getattr__`): DataLoader
    workers started by spawn or forkserver unpickle the dataset by that name."""
    from torch.utils.data import IterableDataset, get_worker_info

    class TorchSplit(IterableDataset):
        def __init__(self, path: Path):
            self.path = path

        def __iter__(self):
            info = get_worker_info()
            step, first = (info.num_workers, info.id) if info else (1, 0)
            with open(self.path, "rb") as f:
                for i, line in enumerate(f):
                    if i % step == first:
                        yield orjson.loads(line)

    TorchSplit.__qualname__ = "TorchSplit"
    return TorchSplit


def __getattr__(name: str):
    if name == "TorchSplit":
        return _torch_split_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["table_arrow", "table_pandas", "table_hf", "table_dataset", "export_split", "iter_split", "torch_split",
           "split_path"]
