"""Local infrastructure the project starts itself: the Kafka broker, Spark defaults, scheduling files."""
