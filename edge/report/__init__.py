"""report: events, outbox, MQTT link to the fleet, Home Assistant discovery, health and metrics."""
