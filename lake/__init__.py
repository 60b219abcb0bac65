"""The lakehouse access layer: table registry, delta-rs writers and readers, DuckDB views, training-job readers."""
