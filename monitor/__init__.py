"""airtrace's monitor: streams, catalogs, matching, play events, Kafka, Redis and metrics."""
