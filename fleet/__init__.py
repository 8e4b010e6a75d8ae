"""LiftGuard fleet server: MQTT ingest, storage, HTTP API and dashboard (docs: fleet/README.md)."""
