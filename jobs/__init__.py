"""PySpark jobs (heuristics, scorecards, export, maintenance), their Spark session factory and scheduler entry points."""
