-- Keystone state, schema 1. Applied at start by rusqlite_migration (src/state/mod.rs).
-- Order of operations and steps is stored explicitly (position); parent ids are for display.

-- One run of a plan.
CREATE TABLE executions (
    id            INTEGER PRIMARY KEY,
    environment   TEXT,              -- app/env, NULL for a plan that spans environments
    commit_id     TEXT,
    root_op       TEXT NOT NULL,     -- plan id of the root operation
    status        TEXT NOT NULL,     -- running | succeeded | failed | cancelled | interrupted
    started_at    TEXT NOT NULL,     -- RFC 3339, UTC
    finished_at   TEXT
);

CREATE TABLE operations (
    execution_id  INTEGER NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
    op_id         TEXT NOT NULL,     -- plan id, unique within the plan
    parent_op_id  TEXT,              -- for display only
    position      INTEGER NOT NULL,  -- depth-first declared order
    depth         INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    title         TEXT NOT NULL,
    server        TEXT,
    status        TEXT NOT NULL,     -- pending | running | succeeded | failed | cancelled | interrupted
    error         TEXT,
    started_at    TEXT,
    finished_at   TEXT,
    duration_ms   INTEGER,
    PRIMARY KEY (execution_id, op_id)
);
CREATE INDEX operations_by_status ON operations(status);

CREATE TABLE steps (
    execution_id  INTEGER NOT NULL,
    op_id         TEXT NOT NULL,
    position      INTEGER NOT NULL,  -- index within the operation
    name          TEXT NOT NULL,
    target        TEXT NOT NULL,     -- `local` or the server name
    action        TEXT NOT NULL,     -- run | upload
    detail        TEXT NOT NULL,     -- upload: path, mode, payload summary; run: stdin summary
    idempotent    INTEGER NOT NULL,
    status        TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    exit_code     INTEGER,
    error         TEXT,
    started_at    TEXT,
    finished_at   TEXT,
    duration_ms   INTEGER,
    PRIMARY KEY (execution_id, op_id, position),
    FOREIGN KEY (execution_id, op_id) REFERENCES operations(execution_id, op_id) ON DELETE CASCADE
);

-- Redacted output of a step's last attempt: its head and tail, and how much was dropped between.
CREATE TABLE step_output (
    execution_id  INTEGER NOT NULL,
    op_id         TEXT NOT NULL,
    position      INTEGER NOT NULL,
    head          TEXT NOT NULL,
    tail          TEXT NOT NULL,
    total_bytes   INTEGER NOT NULL,
    PRIMARY KEY (execution_id, op_id, position),
    FOREIGN KEY (execution_id, op_id, position) REFERENCES steps(execution_id, op_id, position) ON DELETE CASCADE
);

-- What is deployed (plan::Applied, split by key so one environment's record never rewrites
-- another's): one plan::AppliedEnvironment per environment, one plan::AppliedSharedService per
-- shared service, as JSON.
CREATE TABLE applied_environments (
    environment   TEXT PRIMARY KEY,  -- app/env
    config_commit TEXT NOT NULL,
    recorded_at   TEXT NOT NULL,
    data          TEXT NOT NULL
);

CREATE TABLE applied_services (
    service       TEXT PRIMARY KEY,
    recorded_at   TEXT NOT NULL,
    data          TEXT NOT NULL
);

-- Generated credentials (e.g. a Postgres admin password), age-encrypted to the daemon's identity.
CREATE TABLE credentials (
    service       TEXT NOT NULL,
    name          TEXT NOT NULL,
    ciphertext    BLOB NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (service, name)
);
