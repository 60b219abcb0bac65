"""The single source of truth: event contract, table schemas, reward spec and the settings model."""
