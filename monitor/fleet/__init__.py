"""Distributed mode: the pipeline's steps spread over Kafka (broker, wire format, ingest's publisher, the
Faust worker) with the play state in Redis. Nothing here holds play logic; that is monitor.stages'."""
