-- branchpoint's PostgreSQL schema, version 2: the same tables, columns and indexes as
-- schema.sql (read that file for what each column means), in PostgreSQL's types.
--
-- Appends take LOCK TABLE events IN EXCLUSIVE MODE first (readers go on), so that seq
-- order is commit order: a reader that has seen seq N never later meets a new event at
-- or below N. Statements here contain no semicolons except the one ending each of them.

CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS events (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    TEXT NOT NULL UNIQUE,
    tree_id     TEXT NOT NULL,
    type        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    recorded_at TEXT NOT NULL,             -- UTC, fixed width, as in schema.sql
    node_id     TEXT,
    parent_id   TEXT,
    done        SMALLINT,                  -- 1, 0, or NULL when unknown
    value       DOUBLE PRECISION,
    source      TEXT,
    reason      TEXT,
    digest      TEXT,
    payload     TEXT NOT NULL              -- canonical JSON, as text (byte-exact)
);

CREATE INDEX IF NOT EXISTS events_tree_seq ON events (tree_id, seq);
CREATE UNIQUE INDEX IF NOT EXISTS events_node_created
    ON events (tree_id, node_id) WHERE type = 'node_created';
CREATE UNIQUE INDEX IF NOT EXISTS events_action_executed
    ON events (tree_id, node_id) WHERE type = 'action_executed';
CREATE INDEX IF NOT EXISTS events_tree_closed
    ON events (tree_id, seq) WHERE type = 'tree_closed';

CREATE TABLE IF NOT EXISTS trees (
    tree_id        TEXT PRIMARY KEY,
    env            TEXT NOT NULL,
    task_id        TEXT NOT NULL,
    task_id_is_int SMALLINT NOT NULL,
    origin         TEXT,
    created_at     TEXT NOT NULL,
    root_seq       BIGINT NOT NULL,
    split          TEXT
);

CREATE INDEX IF NOT EXISTS trees_env_task ON trees (env, task_id);
CREATE INDEX IF NOT EXISTS trees_created_at ON trees (created_at);
CREATE INDEX IF NOT EXISTS trees_split ON trees (split, root_seq);
