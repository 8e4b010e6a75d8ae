-- depends: 0002_config_reported
-- Messages the store could not write (or that arrived with a device clock outside the accepted window):
-- kept with their reason instead of blocking ingest or being lost. Keyed by a hash of (unit, kind, payload),
-- so a message the broker re-delivers after a restart is counted again, not stored twice.
CREATE TABLE quarantine (
    quarantine_id  TEXT PRIMARY KEY,                  -- sha256 of unit_id, kind and payload
    unit_id        TEXT NOT NULL,
    kind           TEXT NOT NULL,                     -- event | heartbeat | status | snapshot | ...
    reason         TEXT NOT NULL,
    payload        TEXT NOT NULL,                     -- the message as received (snapshots: a note of its size)
    received_at    DOUBLE PRECISION NOT NULL,         -- server clock, first arrival
    last_seen_at   DOUBLE PRECISION NOT NULL,         -- server clock, latest arrival
    times_seen     BIGINT NOT NULL
);
CREATE INDEX quarantine_unit ON quarantine (unit_id, received_at);

-- Snapshot sizes, for the per-unit quota and the total-size retention.
ALTER TABLE snapshots ADD COLUMN size_bytes BIGINT;
UPDATE snapshots SET size_bytes = LENGTH(data);
CREATE INDEX snapshots_received ON snapshots (received_at);
