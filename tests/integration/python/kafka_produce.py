#!/usr/bin/python3
"""Publishes COUNT records to TOPIC with kafka-python (not librdkafka), acks=all: record i
has key "py-key-<i % 3>", headers trace=<i> and bin=b"\\x00\\xff", and value "py-<i>"
followed by the bytes 0, 1 and 255. Prints "sent <partition> <offset>" for each.
Usage: kafka_produce.py BOOTSTRAP TOPIC COUNT"""
import sys

from kafka import KafkaProducer

bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all",
                         api_version=(2, 5, 0), retries=5)
for i in range(count):
    future = producer.send(topic, key=f"py-key-{i % 3}".encode(),
                           value=f"py-{i}".encode() + bytes([0, 1, 255]),
                           headers=[("trace", str(i).encode()), ("bin", b"\x00\xff")])
    meta = future.get(timeout=20)
    print("sent", meta.partition, meta.offset, flush=True)
producer.flush()
producer.close()
