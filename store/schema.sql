-- branchpoint's SQLite schema, version 2 (PostgreSQL's is schema_pg.sql).
--
-- The log is append-only: rows of `events` are inserted and never updated or deleted.
-- `trees` is an index over the roots, also insert-only; whether a tree is finished is
-- derived from its tree_closed events, never stored as a flag that would need updating.
--
-- How to append correctly with nothing but Python's sqlite3 module (this is what
-- branchpoint.store.sqlite3_writer does, and SqlEventLog does the same through SQLAlchemy):
--
--   1. Open with isolation_level=None, then PRAGMA journal_mode=WAL,
--      PRAGMA synchronous=NORMAL, PRAGMA busy_timeout=<ms>, and run this file (every
--      statement is idempotent).
--   2. BEGIN IMMEDIATE: take the write lock first, so that a concurrent writer waits in
--      the busy handler instead of failing half-way with "database is locked".
--   3. Validate each event with branchpoint.store.events (decode_event or normalize), then
--      drop re-sent events with branchpoint.store.validation.drop_duplicates, giving it the
--      stored `digest` of the batch's event_ids, and call check_batch with the facts that
--      lookups() names: the batch's tree_ids present in `trees`, and for each
--      (tree_id, node_id) its node_created row (is it a root?) and action_executed row
--      (done?), and, for a node that the batch marks done, whether a node_created row
--      names it as parent (NodeFacts.has_children). A refused batch raises InvalidEvent
--      whose `problems` list every refused event.
--   4. INSERT the events (leave `seq` to SQLite), then one `trees` row per root (its
--      split from branchpoint.store.splits.split_of_task), then COMMIT. Any error: ROLLBACK, and nothing of the batch is stored.
--
-- Times are stored as RFC 3339 text in UTC with microseconds
-- (2026-01-01T10:00:00.000000+00:00): fixed width, so text order is time order.
-- Statements here contain no semicolons except the one ending each of them, so a plain
-- split on ';' (what the Python code does) yields them one by one.

CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,       -- one row per schema version ever applied
    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE IF NOT EXISTS events (
    -- Store-assigned, strictly increasing, never reused (AUTOINCREMENT): the order of the
    -- log and the cursor of catch-up readers (read everything with seq > N).
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL UNIQUE,      -- client-minted idempotency key
    tree_id     TEXT NOT NULL,
    type        TEXT NOT NULL,             -- node_created | action_executed | score_assigned | tree_closed
    version     INTEGER NOT NULL,          -- payload format version (upcast on read)
    recorded_at TEXT NOT NULL,             -- UTC, fixed width, see above
    -- The scalars the tree fold reads, copied out of the payload so that folding a tree
    -- needs no JSON decoding. NULL where the type has no such field.
    node_id     TEXT,                      -- node_created, action_executed, score_assigned
    parent_id   TEXT,                      -- node_created; NULL for the root
    done        INTEGER,                   -- action_executed: 1, 0, or NULL when unknown
    value       REAL,                      -- score_assigned
    source      TEXT,                      -- score_assigned
    reason      TEXT,                      -- tree_closed
    -- SHA-256 (hex) of the event's content: events.digest(). Equal digests mean the same
    -- fact, which is how an identical re-send is recognised as a no-op.
    digest      TEXT,
    -- The payload as canonical JSON (events.canonical_payload: keys sorted, absent
    -- optional fields omitted). The source of truth for everything above.
    payload     TEXT NOT NULL
);

-- One tree's events in order (read_tree, read_heads).
CREATE INDEX IF NOT EXISTS events_tree_seq ON events (tree_id, seq);

-- Guards at the database level, behind the validation code: a node_id is created once per
-- tree, and a node's action is executed at most once.
CREATE UNIQUE INDEX IF NOT EXISTS events_node_created
    ON events (tree_id, node_id) WHERE type = 'node_created';
CREATE UNIQUE INDEX IF NOT EXISTS events_action_executed
    ON events (tree_id, node_id) WHERE type = 'action_executed';

-- The latest close of a tree (finished or not, and why).
CREATE INDEX IF NOT EXISTS events_tree_closed
    ON events (tree_id, seq) WHERE type = 'tree_closed';

-- One row per tree, written with its root in the same transaction; never updated.
CREATE TABLE IF NOT EXISTS trees (
    tree_id        TEXT PRIMARY KEY,
    env            TEXT NOT NULL,          -- payload.task.env of the root
    task_id        TEXT NOT NULL,          -- payload.task.task_id, as text
    task_id_is_int INTEGER NOT NULL,       -- 1 when task_id was a JSON integer
    origin         TEXT,                   -- payload.origin of the root
    created_at     TEXT NOT NULL,          -- the root's recorded_at
    root_seq       INTEGER NOT NULL,       -- the root's seq
    -- train | validation | heldout: payload.task.split of the root, else the split of a
    -- non-negative integer task_id (branchpoint.store.splits.split_of_task); NULL: none
    split          TEXT
);

CREATE INDEX IF NOT EXISTS trees_env_task ON trees (env, task_id);
CREATE INDEX IF NOT EXISTS trees_split ON trees (split, root_seq);
CREATE INDEX IF NOT EXISTS trees_created_at ON trees (created_at);
