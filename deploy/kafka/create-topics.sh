#!/bin/sh
# Create airtrace's Kafka topics with their partition counts, once, before any airtrace process starts.
# The broker runs with auto.create.topics.enable=false: a topic created on first use would get the
# broker's default partition count, and partitions bound how many workers can share the streams.
# Environment: BOOTSTRAP, TOPICS (space-separated), PARTITIONS, REPLICATION, and for SASL
# SECURITY_PROTOCOL, SASL_MECHANISM, SASL_USERNAME, SASL_PASSWORD. Idempotent: rerunning is harmless,
# and a topic that exists with fewer partitions is grown (Kafka cannot shrink one).
set -eu
umask 077
KAFKA=/opt/kafka/bin
CLIENT=/tmp/client.properties

: > "$CLIENT"
if [ -n "${SECURITY_PROTOCOL:-}" ]; then
  echo "security.protocol=$SECURITY_PROTOCOL" >> "$CLIENT"
fi
if [ -n "${SASL_MECHANISM:-}" ]; then
  case "$SASL_MECHANISM" in
    PLAIN) module=org.apache.kafka.common.security.plain.PlainLoginModule ;;
    *) module=org.apache.kafka.common.security.scram.ScramLoginModule ;;
  esac
  echo "sasl.mechanism=$SASL_MECHANISM" >> "$CLIENT"
  echo "sasl.jaas.config=$module required username=\"$SASL_USERNAME\" password=\"$SASL_PASSWORD\";" >> "$CLIENT"
fi

tries=0
until "$KAFKA/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$CLIENT" --list > /dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "Kafka at $BOOTSTRAP did not answer after $tries tries" >&2
    exit 1
  fi
  sleep 2
done

for topic in $TOPICS; do
  "$KAFKA/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$CLIENT" --create --if-not-exists \
    --topic "$topic" --partitions "$PARTITIONS" --replication-factor "$REPLICATION"
  have=$("$KAFKA/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$CLIENT" --describe --topic "$topic" \
    | sed -n 's/.*PartitionCount: *\([0-9]*\).*/\1/p' | head -n 1)
  if [ "$have" -lt "$PARTITIONS" ]; then
    "$KAFKA/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$CLIENT" --alter --topic "$topic" --partitions "$PARTITIONS"
    have=$PARTITIONS
  fi
  echo "topic $topic: $have partitions"
done
