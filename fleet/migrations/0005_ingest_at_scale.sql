-- depends: 0004_alarm_lifecycle
-- Issue 18: the ingest writer looks up the events that name a batch's snapshots by snapshot id, in one
-- query per batch (not one per unit).
CREATE INDEX events_snapshot ON events (snapshot_id);
