"""The torch IterableDataset over one export split (imported only when torch is installed; see lake/training.py)."""
from __future__ import annotations

from pathlib import Path

import orjson
from torch.utils.data import IterableDataset, get_worker_info


class TorchSplit(IterableDataset):
    """The rows of one export split as dicts; each DataLoader worker reads every n-th line. A module-level class,
    so workers started by spawn or forkserver can unpickle it."""

    def __init__(self, path: Path):
        self.path = path

    def __iter__(self):
        info = get_worker_info()
        step, first = (info.num_workers, info.id) if info else (1, 0)
        with open(self.path, "rb") as f:
            for i, line in enumerate(f):
                if i % step == first:
                    yield orjson.loads(line)
