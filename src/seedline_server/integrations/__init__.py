"""Connections to outside systems: connectors, the transactional outbox, its worker and schedules."""
