"""The analysts' notebooks: committed without outputs, and each one executed (nbclient, a real kernel) against a lake
built in this session — τ-bench through the real worker (`tau_lake`), scored and carded by the Spark jobs, exported."""
from __future__ import annotations

from datetime import timedelta

import nbformat
import pytest

from tests.conftest import REPO, TAU, settings_env

NOTEBOOK_DIR = REPO / "notebooks"
# Every notebook, with what its executed outputs must say. Adding a notebook is one line here.
NOTEBOOKS: dict[str, tuple[str, ...]] = {
    "scorecards": ("week starting", " cards, ", "] n=", "regressions flagged"),
    "trajectory_browser": ("episode: ", "scored with reward-v"),
    "data_quality": ("9/9 suites passed", "no failed expectations", "Data Docs: file://"),
    "pii_audit": ("TOTAL HITS: 0 ", "ground truth: " + str(TAU / "airline-users.json"), "raw τ-bench trajectories:"),
}
# notebooks whose outputs must include a figure
PLOTS = {"scorecards", "trajectory_browser"}


@pytest.mark.unit
def test_every_notebook_is_listed():
    assert {p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")} == set(NOTEBOOKS)


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_committed_without_outputs(name):
    """Outputs hold lake data (and would churn every diff): notebooks are committed clean."""
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}.ipynb cell {i} has outputs: clear them before committing"
            assert cell.execution_count is None, f"{name}.ipynb cell {i} has an execution count"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.fixture(scope="module")
def notebook_lake(spark, tau_lake):
    """The session's τ-bench lake with gold tables (newest reward spec) and an export, as an analyst would find it."""
    import pyarrow.compute as pc

    from jobs import heuristics, scorecards
    from jobs.export import ExportRequest, run
    from jobs.export_rows import FORMATS
    from lake.readers import read_table
    from schemas.tables import SILVER_EPISODES

    s, _, _ = tau_lake
    dates = read_table(s, SILVER_EPISODES, columns=["date"]).column("date")
    start, end = pc.min(dates).as_py(), pc.max(dates).as_py() + timedelta(days=1)
    heuristics.run(spark, s, start, end)
    scorecards.run(spark, s, start, end)
    s = s.model_copy(update={"pii_ground_truth": TAU / "airline-users.json"})
    run(s, ExportRequest("notebooks", tuple(FORMATS), start, end))
    return s


def execute(name: str, env: dict[str, str]) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    # the kernel gets exactly `env` (start_kernel's env): the lake is chosen by TRAJLAKE_* only, as for an analyst
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute(env=env)
    return nb


def output_text(nb) -> tuple[str, int]:
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text.append(out["text"])
            elif "data" in out:
                text.append(out["data"].get("text/plain", ""))
                images += "image/png" in out["data"]
    return "\n".join(text), images


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_against_a_real_lake(name, notebook_lake):
    env = settings_env(notebook_lake) | {"PYTHONPATH": str(REPO)}
    nb = execute(name, env)
    text, images = output_text(nb)
    for needle in NOTEBOOKS[name]:
        assert needle in text, f"{name}: {needle!r} not in the outputs:\n{text[-3000:]}"
    assert "lake: " + str(notebook_lake.lake) in text  # it read the test's lake, not the default one
    if name in PLOTS:
        assert images >= 1, f"{name} drew no figure"
