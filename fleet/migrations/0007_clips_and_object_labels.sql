-- depends: 0006_lifecycle_models
-- Event clips (issue 17): the parts of clips being uploaded (contract/clips.py: chunks on clips/{id}, which
-- may reach different fleet servers), and each stored clip with its frames, kept only for a stored alert.
CREATE TABLE clip_parts (
    unit_id      TEXT NOT NULL,
    clip_id      TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    idx          INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    received_at  DOUBLE PRECISION NOT NULL,
    size_bytes   BIGINT NOT NULL,
    data         BYTEA NOT NULL,
    PRIMARY KEY (unit_id, clip_id, sha256, idx)
);
CREATE INDEX clip_parts_received ON clip_parts (received_at);

CREATE TABLE clips (
    unit_id      TEXT NOT NULL,
    clip_id      TEXT NOT NULL,
    event_id     TEXT NOT NULL,                     -- the alert (start event) of the clip's incident
    reason       TEXT NOT NULL,
    received_at  DOUBLE PRECISION NOT NULL,
    size_bytes   BIGINT NOT NULL,
    frames       INTEGER NOT NULL,
    manifest     TEXT NOT NULL,                     -- clip.json (ClipManifest) as JSON
    PRIMARY KEY (unit_id, clip_id)
);
CREATE INDEX clips_event ON clips (event_id);
CREATE INDEX clips_received ON clips (received_at);

CREATE TABLE clip_frames (
    unit_id      TEXT NOT NULL,
    clip_id      TEXT NOT NULL,
    idx          INTEGER NOT NULL,
    data         BYTEA NOT NULL,
    PRIMARY KEY (unit_id, clip_id, idx)
);

-- Per-object class corrections (issue 17 item 2): on an alert's clip frame, what object `object_idx` of
-- that frame's detections really is (a class of contract.model_format.TRAINING_CLASSES, or 'none').
CREATE TABLE object_labels (
    event_id     TEXT NOT NULL,
    frame_idx    INTEGER NOT NULL,
    object_idx   INTEGER NOT NULL,
    seen_cls     TEXT NOT NULL,
    cls          TEXT NOT NULL,
    username     TEXT NOT NULL,
    labelled_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (event_id, frame_idx, object_idx)
);

-- The shadow model's frames run and skipped for the frame budget, from the heartbeats (issue 17).
ALTER TABLE units ADD COLUMN shadow_runs BIGINT;
ALTER TABLE units ADD COLUMN shadow_skipped_budget BIGINT;
-- The unit's event clips since start-up, from its heartbeats: uploaded whole, lost on the unit.
ALTER TABLE units ADD COLUMN clips_uploaded BIGINT;
ALTER TABLE units ADD COLUMN clips_lost BIGINT;
