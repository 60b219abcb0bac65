"""The Airflow DAGs parse in Airflow's own DagBag (an isolated venv from infra/airflow/requirements.txt, built once
per machine and file hash): no import errors, one DAG per schedule entry with the entry's cron and task id, and the
rendered command equal to what `trajlake schedule --dry-run` shows for the same fire time."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest

from jobs.schedule import command, latest_fire, load_schedule, window_for
from tests.conftest import REPO
from tests.machine_cache import machine_cache

pytestmark = pytest.mark.integration
REQUIREMENTS = REPO / "infra" / "airflow" / "requirements.txt"
DAGS = REPO / "infra" / "airflow"
FIRE = "2026-11-02T04:00:00+00:00"  # a Monday: daily and weekly entries both have a window then

PARSE = r"""
import json, sys
from datetime import datetime
from airflow.models.dagbag import DagBag

fire = datetime.fromisoformat(sys.argv[2])
bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
out = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id, dag in bag.dags.items():
    task = next(t for t in dag.tasks if hasattr(t, "bash_command"))
    rendered = dag.get_template_env().from_string(task.bash_command).render(
        logical_date=fire, dag_run=None, **dag.user_defined_macros)
    sensors = {t.task_id: {"dag": t.external_dag_id, "task": t.external_task_id,
                           "date": t.execution_date_fn(fire).isoformat(), "mode": t.mode,
                           "downstream": sorted(t.downstream_task_ids)}
               for t in dag.tasks if t.task_id.startswith("wait_for_")}
    out["dags"][dag_id] = {"task_ids": dag.task_ids, "cron": getattr(dag.timetable, "_expression", None),
                           "max_active_runs": dag.max_active_runs, "catchup": dag.catchup, "command": rendered,
                           "sensors": sensors}
print("RESULT " + json.dumps(out))
"""


def install_airflow(venv: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "-r", str(REQUIREMENTS)], check=True, timeout=1200)
    subprocess.run([*pip, "check"], check=True, timeout=300)


@pytest.fixture(scope="module")
def airflow_python() -> Iterator[Path]:
    """Airflow's venv from its pinned requirements, built once per machine (tests/machine_cache.py)."""
    with machine_cache("airflow-venv", REQUIREMENTS, install_airflow) as venv:
        yield venv / "bin" / "python"


def parse(airflow: Path, tmp_path: Path, schedule_file: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAJLAKE_", "AIRFLOW", "PYTHON"))}
    env |= {"AIRFLOW_HOME": str(tmp_path / "airflow-home"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "TRAJLAKE_SCHEDULE_FILE": str(schedule_file), "TL_AIRFLOW_REPO": str(REPO),
            "TL_AIRFLOW_PYTHON": sys.executable, "TL_AIRFLOW_SPARK_MASTER": "local[2]"}
    r = subprocess.run([str(airflow), "-c", PARSE, str(DAGS), FIRE], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_every_schedule_entry_is_a_dag_running_the_same_command(airflow_python, tmp_path):
    schedule_file = REPO / "infra" / "schedule.toml"
    got = parse(airflow_python, tmp_path, schedule_file)
    assert got["import_errors"] == {}
    entries = load_schedule(schedule_file).entries
    assert set(got["dags"]) == {f"trajlake.{e.name}" for e in entries}
    fire = datetime.fromisoformat(FIRE).astimezone(timezone.utc)
    for e in entries:
        dag = got["dags"][f"trajlake.{e.name}"]
        assert sorted(dag["task_ids"]) == sorted([e.job, *(f"wait_for_{d}" for d in e.after)])
        # `after`: a sensor per entry waited for, on its run of the latest fire at or before this one, before the job
        for d in e.after:
            dep = load_schedule(schedule_file).entry(d)
            assert dag["sensors"][f"wait_for_{d}"] == {
                "dag": f"trajlake.{d}", "task": dep.job, "date": latest_fire(dep.cron, fire).isoformat(),
                "mode": "reschedule", "downstream": [e.job]}
        assert dag["cron"] == e.cron and dag["max_active_runs"] == 1 and dag["catchup"] is False
        expected = command(e, window_for(e, fire), python=sys.executable, repo=str(REPO), master="local[2]")
        assert dag["command"] == expected
    heur = got["dags"]["trajlake.heuristics-daily"]["command"]
    assert "spark-submit --master 'local[2]'" in heur and "--start 2026-10-31 --end 2026-11-02" in heur
    # the Monday's weekly cards wait for that Monday's 01:30 heuristics
    assert got["dags"]["trajlake.scorecards-weekly"]["sensors"]["wait_for_heuristics-daily"]["date"] == \
        "2026-11-02T01:30:00+00:00"


def test_a_broken_schedule_is_an_import_error_naming_the_problem(airflow_python, tmp_path):
    bad = tmp_path / "schedule.toml"
    bad.write_text('[[job]]\nname = "h"\njob = "heuristics"\ncron = "0 25 * * *"\nwindow = "previous_day"\n')
    got = parse(airflow_python, tmp_path, bad)
    assert got["dags"] == {}
    (error,) = got["import_errors"].values()
    assert "'0 25 * * *' is not a valid cron expression" in error
