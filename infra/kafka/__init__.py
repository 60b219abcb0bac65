"""A real single-node Apache Kafka 4.x broker in KRaft mode, resolved from Maven Central by infra/kafka/pom.xml."""
