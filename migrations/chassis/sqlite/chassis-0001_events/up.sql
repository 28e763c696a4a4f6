-- The event plumbing every module database carries (applied before the module's own
-- migrations): the transactional outbox of the events the module publishes, the inbox of
-- the events it has handled, and the dead letters of the events it could not handle.
--
-- Every row written on the order path costs a page of WAL per b-tree it touches, so tables
-- keyed by text with small rows are WITHOUT ROWID (one b-tree, not a table and an index),
-- and no constraint is kept that nothing reads: `seq` is a plain rowid (AUTOINCREMENT
-- would rewrite `sqlite_sequence` on every insert; a new row still always gets a `seq`
-- above every row present, which is all the relay's order needs), and `event_id` (a fresh
-- UUID) is not indexed.

CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    event_key TEXT NOT NULL,
    occurred_at TIMESTAMP NOT NULL,
    envelope TEXT NOT NULL,
    lease_owner TEXT,
    lease_until TIMESTAMP,
    published_at TIMESTAMP
);
CREATE INDEX outbox_pending ON outbox (seq) WHERE published_at IS NULL;
CREATE INDEX outbox_pending_key ON outbox (event_key, seq) WHERE published_at IS NULL;
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;

CREATE TABLE inbox (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    handled_at TIMESTAMP NOT NULL,
    PRIMARY KEY (consumer, event_id)
) WITHOUT ROWID;

CREATE TABLE dead_letters (
    id TEXT PRIMARY KEY NOT NULL,
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    event_key TEXT NOT NULL,
    envelope TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    failed_at TIMESTAMP NOT NULL,
    replayed_at TIMESTAMP
);
CREATE INDEX dead_letters_open ON dead_letters (failed_at) WHERE replayed_at IS NULL;
