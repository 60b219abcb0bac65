"""Event sources: τ-bench replay and synthetic product sessions, as plain generators of contract events."""
