#!/usr/bin/python3
"""Reads COUNT records of TOPIC with kafka-python (not librdkafka) and prints each as one
JSON line: partition, offset, key, headers and value (bytes as lists of integers, so that
binary data survives). Usage: kafka_consume.py BOOTSTRAP TOPIC COUNT [TIMEOUT_S]"""
import json
import sys
import time

from kafka import KafkaConsumer

bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 20.0

# No group: kafka-python assigns itself every partition and reads from the beginning.
# api_version is given because the probing of librdkafka's mock cluster is unreliable.
consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap.split(","), group_id=None,
                         auto_offset_reset="earliest", enable_auto_commit=False,
                         api_version=(2, 5, 0), consumer_timeout_ms=500)
seen = 0
deadline = time.monotonic() + timeout
while seen < count and time.monotonic() < deadline:
    for record in consumer:
        print(json.dumps({
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": record.timestamp,
            "key": None if record.key is None else list(record.key),
            "headers": [[name, list(value or b"")] for name, value in (record.headers or [])],
            "value": list(record.value or b""),
        }), flush=True)
        seen += 1
        if seen >= count:
            break
consumer.close()
sys.exit(0 if seen >= count else 1)
