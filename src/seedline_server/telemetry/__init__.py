"""Sensor telemetry: the ingest pipeline, partitions, roll-ups, queries and live fan-out."""
