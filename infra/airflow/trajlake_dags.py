"""Airflow DAGs for the schedule file: one DAG per entry (same cron, same window), running the job with spark-submit."""
from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.sensors.external_task import ExternalTaskSensor
from airflow.sdk import DAG

# Where the trajlake checkout and its venv are on the Airflow workers. Defaults: this file's checkout and its .venv.
# (Read here because a DAG file is an entry point; the names avoid the TRAJLAKE_ prefix of the settings.)
REPO = Path(os.environ.get("TL_AIRFLOW_REPO", Path(__file__).resolve().parents[2]))
PYTHON = os.environ.get("TL_AIRFLOW_PYTHON", str(REPO / ".venv" / "bin" / "python"))
# the Spark master the jobs are submitted to (yarn, k8s://…, spark://…); local[*] runs them on the worker
MASTER = os.environ.get("TL_AIRFLOW_SPARK_MASTER", "local[*]")
SCHEDULE = Path(os.environ.get("TRAJLAKE_SCHEDULE_FILE", REPO / "infra" / "schedule.toml"))

# jobs/schedule.py needs only the standard library and croniter (which Airflow has): the same parser, windows
# and commands as `trajlake schedule`, without trajlake's dependencies in Airflow's environment
sys.path.insert(0, str(REPO))
from jobs.schedule import Entry, command, latest_fire, load_schedule, window_for  # noqa: E402


def _command_at(entry: Entry):
    def render(fire: datetime) -> str:
        return command(entry, window_for(entry, fire), python=PYTHON, repo=str(REPO), master=MASTER)
    return render


def _dependency_fire(cron: str):
    # the run of the entry waited for: its latest fire at or before this run's (as `trajlake schedule` decides)
    def at(logical_date: datetime, **_) -> datetime:
        return latest_fire(cron, logical_date)
    return at


_schedule = load_schedule(SCHEDULE)
for _entry in _schedule.entries:
    with DAG(
        dag_id=f"trajlake.{_entry.name}",
        description=f"trajlake {_entry.job} ({_entry.window}) from {SCHEDULE.name}",
        # a cron string is a CronTriggerTimetable in Airflow 3: the run's logical date is its fire time, and the
        # window is computed from it exactly as `trajlake schedule` does
        schedule=_entry.cron if _entry.enabled else None,
        start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
        catchup=False,        # like the embedded scheduler: missed fires are not replayed (backfill explicitly)
        max_active_runs=1,    # runs of one entry never overlap
        is_paused_upon_creation=False,
        tags=["trajlake", _entry.job],
        user_defined_macros={"trajlake_command": _command_at(_entry)},
        default_args={"retries": 0, "execution_timeout": timedelta(hours=6)},
    ) as dag:
        job = BashOperator(
            task_id=_entry.job,
            # a manual run may have no logical date in Airflow 3: it then covers the window before its run_after
            bash_command="{{ trajlake_command(logical_date or dag_run.run_after) }}",
            # the TRAJLAKE_* settings come from the worker's environment (append_env keeps it)
            append_env=True,
        )
        for _dep in _entry.after:
            _d = _schedule.entry(_dep)
            # `after`: wait for that entry's run of its latest fire at or before ours to succeed (rescheduling,
            # so no worker slot is held while waiting); a failed run of it fails the wait at once
            ExternalTaskSensor(
                task_id=f"wait_for_{_dep}",
                external_dag_id=f"trajlake.{_dep}",
                external_task_id=_d.job,
                execution_date_fn=_dependency_fire(_d.cron),
                failed_states=["failed", "upstream_failed"],
                mode="reschedule",
                poke_interval=300,
                timeout=6 * 3600,
            ) >> job
    globals()[dag.dag_id.replace(".", "_").replace("-", "_")] = dag
