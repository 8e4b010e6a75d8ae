-- depends: 0003_quarantine_and_snapshot_sizes
-- Alarm lifecycle (active -> acknowledged -> cleared), notifications and disabled users.
-- An alert (an event with phase 'start') is acknowledged by the first verdict a person gives it, and
-- cleared when its hold ends (the unit's 'end' event of the same incident) or when a person clears it.
ALTER TABLE events ADD COLUMN acknowledged_by TEXT;
ALTER TABLE events ADD COLUMN acknowledged_at DOUBLE PRECISION;
ALTER TABLE events ADD COLUMN cleared_by TEXT;                    -- a person; NULL when the hold ended
-- cleared_at: set by the ingest writer from the incident's 'end' event (cleared_by NULL), or by a person.
ALTER TABLE events ADD COLUMN cleared_at DOUBLE PRECISION;
-- The notifier's bookkeeping: claimed by one fleet server (UPDATE ... WHERE notified_at IS NULL), so two
-- servers on one database never both send. Alerts stored before this migration count as told.
ALTER TABLE events ADD COLUMN notified_at DOUBLE PRECISION;
ALTER TABLE events ADD COLUMN escalated_at DOUBLE PRECISION;
UPDATE events SET notified_at = received_at, escalated_at = received_at;
UPDATE events SET acknowledged_by = (SELECT l.username FROM labels l WHERE l.event_id = events.event_id),
                  acknowledged_at = (SELECT l.labelled_at FROM labels l WHERE l.event_id = events.event_id);
CREATE INDEX events_incident ON events (incident_id, phase, unit_id);
UPDATE events SET cleared_at = (SELECT MIN(x.ts) FROM events x WHERE x.incident_id = events.incident_id
                                AND x.phase = 'end' AND x.unit_id = events.unit_id)
WHERE phase = 'start';
-- The header's counts: alerts without a verdict, alerts whose hold has not ended.
CREATE INDEX events_unacknowledged ON events (type) WHERE acknowledged_at IS NULL AND phase = 'start';
CREATE INDEX events_uncleared ON events (type) WHERE cleared_at IS NULL AND phase = 'start';
CREATE INDEX events_to_notify ON events (received_at) WHERE notified_at IS NULL;
CREATE INDEX events_to_escalate ON events (received_at) WHERE escalated_at IS NULL;
-- A disabled user cannot log in; their sessions end when they are disabled.
ALTER TABLE users ADD COLUMN disabled_at DOUBLE PRECISION;
