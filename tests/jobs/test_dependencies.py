"""jobs/ is the batch side: it never loads Faust or streams/ (not even lazily inside a function), so a Spark
driver or an Airflow worker needs none of the stream's machinery."""
from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.unit


def imported_modules(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((REPO / "jobs").glob("*.py")), ids=lambda p: p.name)
def test_jobs_never_import_faust_or_streams(path):
    bad = {m for m in imported_modules(path) if m.split(".")[0] in ("faust", "streams")}
    assert not bad, f"{path.name} imports {sorted(bad)}"
