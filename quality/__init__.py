"""Quality gates: a Great Expectations suite per table (suites.py) and the runner jobs call before publishing (runner.py)."""
