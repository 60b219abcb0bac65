"""Suites run over the lake's tables as they stand (a window of days): how bronze and silver, which the stream
publishes continuously, are checked (`trajlake quality check`, schedulable), and how any table can be re-checked."""
from __future__ import annotations

from datetime import date
from typing import Callable, Sequence

import pyarrow as pa

from lake.duckdb_views import connect, view_name
from lake.locks import outside_erase
from quality.runner import QualityReport, check, data_docs_once
from quality.suites import checked_tables, suite_for
from schemas.reward import RewardSpec
from schemas.settings import Settings
from schemas.tables import TABLES

# the day column a window applies to, per table (the partition column, or its nearest equivalent)
WINDOW_COLUMN = {"gold/scorecards": "period_start", "gold/guardrails": "period_start", "gold/review_queue": "week"}


def table_window(settings: Settings, table_id: str, start: date | None, end: date | None,
                 spec: RewardSpec) -> pa.Table:
    """The rows of `table_id` whose day is in [start, end) (every row when unbounded); gold rows of `spec` only."""
    con = connect(settings)
    try:
        cols = set(TABLES[table_id].schema.names)
        where = []
        day = WINDOW_COLUMN.get(table_id, "date")
        if start is not None:
            where.append(f"{day} >= DATE '{start}'")
        if end is not None:
            where.append(f"{day} < DATE '{end}'")
        if "reward_version" in cols:
            where.append(f"reward_version = '{spec.version}'")
        sql = f"SELECT * FROM {view_name(table_id)}" + (" WHERE " + " AND ".join(where) if where else "")
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


def check_lake(settings: Settings, spec: RewardSpec, tables: Sequence[str] | None = None,
               start: date | None = None, end: date | None = None,
               progress: Callable[[str], None] = lambda _: None) -> list[QualityReport]:
    """Run the suite of each table over its window; failing rows go to quality/quarantine. Raises nothing: the
    caller decides what a failure means (the CLI exits non-zero)."""
    reports = []
    # failing rows are copied, user ids and all, into quality/quarantine: not beside an erase (lake/locks.py)
    with outside_erase(settings.lake, progress), data_docs_once(settings):
        for table_id in tables or checked_tables():
            suite = suite_for(table_id, spec)
            progress(f"checking {table_id}")
            data = table_window(settings, table_id, start, end, spec)
            reports.append(check(settings, suite, data))
    return reports
