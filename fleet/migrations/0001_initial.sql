-- LiftGuard fleet schema v1. Plain SQL that both SQLite (>= 3.24) and PostgreSQL (>= 12) accept:
-- times are epoch seconds (DOUBLE PRECISION), flags are INTEGER 0/1, binary data is BYTEA
-- (SQLite gives that type name NUMERIC affinity, which stores blobs untouched).

CREATE TABLE units (
    unit_id          TEXT PRIMARY KEY,
    site             TEXT,
    building         TEXT,
    elevator         TEXT,
    state            TEXT NOT NULL DEFAULT 'unknown',  -- last `status`: online / offline / stopped
    state_at         DOUBLE PRECISION,
    last_seen        DOUBLE PRECISION,                 -- server clock, any message from the unit
    last_heartbeat   DOUBLE PRECISION,                 -- server clock
    software         TEXT,
    model_id         TEXT,
    camera           TEXT,
    relay            TEXT,
    blocking_enabled INTEGER,
    fps              DOUBLE PRECISION,
    inference_p95_ms DOUBLE PRECISION,
    outbox_depth     INTEGER,
    first_seen       DOUBLE PRECISION NOT NULL
);
CREATE INDEX units_site_building ON units (site, building);

-- Heartbeats are rolled up per unit and hour: 12k units every 30 s would otherwise be 35M rows a day.
CREATE TABLE heartbeat_hours (
    unit_id          TEXT NOT NULL,
    hour             BIGINT NOT NULL,                  -- floor(server time / 3600)
    beats            INTEGER NOT NULL,
    fps_sum          DOUBLE PRECISION NOT NULL,
    inference_p95_max DOUBLE PRECISION NOT NULL,
    camera_bad       INTEGER NOT NULL,                 -- beats whose camera was not online
    PRIMARY KEY (unit_id, hour)
);

CREATE TABLE events (
    event_id     TEXT PRIMARY KEY,                     -- the device's dedupe key
    incident_id  TEXT NOT NULL,
    unit_id      TEXT NOT NULL,
    type         TEXT NOT NULL,
    phase        TEXT NOT NULL,
    ts           DOUBLE PRECISION NOT NULL,            -- device clock
    day          TEXT NOT NULL,                        -- date of ts in the site's zone when stored
    received_at  DOUBLE PRECISION NOT NULL,            -- server clock
    cls          TEXT,
    confidence   DOUBLE PRECISION,
    hold_s       DOUBLE PRECISION,
    snapshot_id  TEXT,                                 -- the `snapshots/{id}` suffix it refers to
    detail       TEXT,
    payload      TEXT NOT NULL                         -- the validated JSON as received
);
CREATE INDEX events_received ON events (received_at);
CREATE INDEX events_unit ON events (unit_id, ts);
CREATE INDEX events_day ON events (day);

CREATE TABLE snapshots (
    unit_id      TEXT NOT NULL,
    snapshot_id  TEXT NOT NULL,
    received_at  DOUBLE PRECISION NOT NULL,
    data         BYTEA NOT NULL,
    PRIMARY KEY (unit_id, snapshot_id)
);

-- A verdict is a label on an alert: the dataset export joins these with their snapshots.
CREATE TABLE labels (
    event_id     TEXT PRIMARY KEY,
    verdict      TEXT NOT NULL CHECK (verdict IN ('acknowledged', 'false_alarm', 'confirmed')),
    username     TEXT NOT NULL,
    labelled_at  DOUBLE PRECISION NOT NULL
);

CREATE TABLE commands (
    command_id    TEXT PRIMARY KEY,
    unit_id       TEXT NOT NULL,
    name          TEXT NOT NULL,
    requested_by  TEXT NOT NULL,
    requested_at  DOUBLE PRECISION NOT NULL,
    result_ok     INTEGER,
    result_detail TEXT,
    result_at     DOUBLE PRECISION
);
CREATE INDEX commands_unit ON commands (unit_id, requested_at);

CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    role          TEXT NOT NULL CHECK (role IN ('manager', 'admin')),
    password_hash TEXT NOT NULL,
    created_at    DOUBLE PRECISION NOT NULL
);

CREATE TABLE sessions (
    token_hash   TEXT PRIMARY KEY,                     -- sha256 of the cookie; a DB leak is no login
    username     TEXT NOT NULL,
    csrf_token   TEXT NOT NULL,
    created_at   DOUBLE PRECISION NOT NULL,
    expires_at   DOUBLE PRECISION NOT NULL
);
