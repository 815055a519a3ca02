-- The ordered feed's consumers and the audit seals.
--
-- feed_checkpoints: how far each reader of the ordered feed (the relay, a projection in
-- single-node mode) has got, as (tx_id, position) — see docs/architecture.md.
-- events_notify: wakes feed readers on every insert (they also poll as a fallback).
-- audit_log_leaves / audit_checkpoints: the relay's Merkle log of event hashes, in relay
-- order (RFC 6962), and its signed checkpoints. Both append-only.

CREATE TABLE feed_checkpoints
(
    consumer   text PRIMARY KEY,
    tx_id      xid8        NOT NULL,
    position   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE FUNCTION events_notify() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify('lis_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();

CREATE TABLE audit_log_leaves
(
    leaf_index bigint PRIMARY KEY CHECK (leaf_index >= 0),
    position   bigint NOT NULL UNIQUE REFERENCES events (position),
    leaf_hash  bytea  NOT NULL CHECK (octet_length(leaf_hash) = 32)
);

CREATE TABLE audit_checkpoints
(
    tree_size   bigint PRIMARY KEY CHECK (tree_size >= 1),
    root_hash   bytea       NOT NULL CHECK (octet_length(root_hash) = 32),
    signed_note text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TRIGGER audit_log_leaves_append_only BEFORE UPDATE OR DELETE ON audit_log_leaves
    FOR EACH ROW EXECUTE FUNCTION lis_refuse_change();
CREATE TRIGGER audit_log_leaves_no_truncate BEFORE TRUNCATE ON audit_log_leaves
    FOR EACH STATEMENT EXECUTE FUNCTION lis_refuse_change();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION lis_refuse_change();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION lis_refuse_change();

REVOKE ALL ON feed_checkpoints, audit_log_leaves, audit_checkpoints FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON feed_checkpoints TO lisledger_app;
GRANT SELECT, INSERT ON audit_log_leaves, audit_checkpoints TO lisledger_app;
