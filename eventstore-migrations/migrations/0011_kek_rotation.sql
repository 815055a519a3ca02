-- Key-encryption key rotation (`lisledger keys rotate`, docs/privacy.md), and the
-- auditors' reads of the key and break-glass records (GET /audit/key-rotations,
-- GET /audit/break-glass).
--
-- A rotation re-wraps the ledger's own keys and every live patient data key from the
-- previous KEK to the current one, as the owner role; the data keys, and so every sealed
-- value in the events, are unchanged. Each finished rotation is recorded here: who, why,
-- when, from which KEK to which (ids are fingerprints, never keys), and how many keys.
-- Append-only, like the events.

CREATE TABLE kek_rotations
(
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    finished_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    from_kek_id  text        NOT NULL,
    to_kek_id    text        NOT NULL CHECK (to_kek_id <> from_kek_id),
    ledger_keys  bigint      NOT NULL CHECK (ledger_keys >= 0),
    patient_keys bigint      NOT NULL CHECK (patient_keys >= 0),
    actor_id     text        NOT NULL CHECK (length(btrim(actor_id)) > 0),
    reason       text        NOT NULL CHECK (length(btrim(reason)) > 0)
);
CREATE TRIGGER kek_rotations_no_update BEFORE UPDATE ON kek_rotations
    FOR EACH ROW EXECUTE FUNCTION lis_refuse_change();
CREATE TRIGGER kek_rotations_no_delete BEFORE DELETE ON kek_rotations
    FOR EACH ROW EXECUTE FUNCTION lis_refuse_change();
CREATE TRIGGER kek_rotations_no_truncate BEFORE TRUNCATE ON kek_rotations
    FOR EACH STATEMENT EXECUTE FUNCTION lis_refuse_change();

REVOKE ALL ON kek_rotations FROM PUBLIC;
-- The ledger may read the record (auditors); only the owner rotates.
GRANT SELECT ON kek_rotations TO lisledger_app;

-- Break-glass reads by time range, and by actor (GET /audit/actors/{user}).
CREATE INDEX break_glass_log_at ON break_glass_log (at);
CREATE INDEX break_glass_log_by_actor ON break_glass_log (actor_id, at);
