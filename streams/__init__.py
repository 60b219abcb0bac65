"""The stream side: event sources, the Faust app (ingest, join, sink agents) and the Kafka producer."""
