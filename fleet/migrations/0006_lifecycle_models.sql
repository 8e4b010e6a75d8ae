-- depends: 0005_ingest_at_scale
-- The model registry (issue 17): every model file the fleet may roll out, checked as the device
-- checks it (contract/onnx_header.py), with its bytes; and one row per unit per rollout.
CREATE TABLE models (
    model_id     TEXT PRIMARY KEY,
    sha256       TEXT NOT NULL UNIQUE,
    size_bytes   BIGINT NOT NULL,
    version      TEXT,
    classes      TEXT NOT NULL,                     -- JSON list
    metadata     TEXT NOT NULL,                     -- JSON object: the file's metadata_props
    added_at     DOUBLE PRECISION NOT NULL,
    added_by     TEXT,
    data         BYTEA NOT NULL
);

CREATE TABLE rollouts (
    rollout_id   TEXT NOT NULL,
    model_id     TEXT NOT NULL REFERENCES models (model_id),
    unit_id      TEXT NOT NULL,
    stage        TEXT NOT NULL CHECK (stage IN ('shadow', 'active', 'off')),
    state        TEXT NOT NULL CHECK (state IN ('sent', 'receiving', 'ok', 'failed', 'no_answer')),
    detail       TEXT,
    active_model TEXT,                              -- what the unit reported running afterwards
    shadow_model TEXT,
    created_at   DOUBLE PRECISION NOT NULL,
    updated_at   DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (rollout_id, unit_id)
);
CREATE INDEX rollouts_unit ON rollouts (unit_id, updated_at);

-- The shadow model each unit runs, from its heartbeats (the active one is units.model_id).
ALTER TABLE units ADD COLUMN shadow_model_id TEXT;
