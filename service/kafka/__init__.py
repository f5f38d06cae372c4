"""Kafka plumbing: the embedded broker, topic creation, client settings, produce and follow."""
