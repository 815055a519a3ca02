-- Key-encryption key rotation (`lisledger keys rotate`, docs/privacy.md), and the
-- auditors' reads of the key and break-glass records (GET /audit/key-rotations,
-- GET /audit/break-glass).
--
-- A rotation re-wraps the ledger's own keys and every live patient data key from the
-- previous KEK to the current one, as the owner role; the data keys, and so every sealed
-- value in the events, are unchanged. Each step of a run is recorded here in the same
-- transaction as the keys it re-wrapped (`ledger-keys`, `patient-keys` batches), and the
-- run's end once no live key is left under the previous KEK (`finished`): who, why,
-- when, from which KEK to which (ids are fingerprints, never keys), how many keys. A run
-- that stopped part-way shows as one without `finished`. Append-only, like the events.

CREATE TABLE kek_rotations
(
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      uuid        NOT NULL,
    step        text        NOT NULL CHECK (step IN ('ledger-keys', 'patient-keys', 'finished')),
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    from_kek_id text        NOT NULL,
    to_kek_id   text        NOT NULL CHECK (to_kek_id <> from_kek_id),
    keys        bigint      NOT NULL CHECK (keys >= 0),
    actor_id    text        NOT NULL CHECK (length(btrim(actor_id)) > 0),
    reason      text        NOT NULL CHECK (length(btrim(reason)) > 0)
);
CREATE INDEX kek_rotations_by_run ON kek_rotations (run_id);
CREATE TRIGGER kek_rotations_no_update BEFORE UPDATE ON kek_rotations
    FOR EACH ROW EXECUTE FUNCTION lis_refuse_change();
CREATE TRIGGER kek_rotations_no_delete BEFORE DELETE ON kek_rotations
    FOR EACH ROW EXECUTE FUNCTION lis_refuse_change();
CREATE TRIGGER kek_rotations_no_truncate BEFORE TRUNCATE ON kek_rotations
    FOR EACH STATEMENT EXECUTE FUNCTION lis_refuse_change();

REVOKE ALL ON kek_rotations FROM PUBLIC;
-- The ledger may read the record (auditors); only the owner rotates.
GRANT SELECT ON kek_rotations TO lisledger_app;

-- The live keys under one KEK, in patient id order: a rotation's batches, and the
-- checks that count what is left, read these whatever the planner's statistics say.
CREATE INDEX patient_keys_by_kek ON patient_keys (kek_id, patient_id) WHERE wrapped_key IS NOT NULL;

-- A live key changes only by being re-wrapped under another KEK (a rotation: new bytes
-- and a new kek_id together) or destroyed (an erasure): never overwritten in place under
-- the same KEK, nor relabelled with another KEK's id, either of which would lose the
-- patient's identity as surely as an erasure, with no record of one.
CREATE OR REPLACE FUNCTION patient_keys_guard() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'patient_keys rows are never deleted (erase sets wrapped_key to NULL)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.erased_at IS NOT NULL THEN
        RAISE EXCEPTION 'patient % is erased; its key cannot be restored', OLD.patient_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.wrapped_key IS NOT NULL
        AND (NEW.wrapped_key = OLD.wrapped_key) <> (NEW.kek_id = OLD.kek_id) THEN
        RAISE EXCEPTION 'patient %''s key changes only by being re-wrapped under another key-encryption key (new bytes and new kek_id together)', OLD.patient_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

-- The ledger's own keys likewise: never deleted (the pseudonym index's key is every
-- pseudonym), renamed or overwritten; only re-wrapped under another KEK.
CREATE FUNCTION ledger_keys_guard() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'ledger key % is never deleted', OLD.name
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.name <> OLD.name OR (NEW.wrapped = OLD.wrapped) <> (NEW.kek_id = OLD.kek_id)
        OR NEW.created_at <> OLD.created_at THEN
        RAISE EXCEPTION 'ledger key % changes only by being re-wrapped under another key-encryption key', OLD.name
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER ledger_keys_guard BEFORE UPDATE OR DELETE ON ledger_keys
    FOR EACH ROW EXECUTE FUNCTION ledger_keys_guard();
CREATE TRIGGER ledger_keys_no_truncate BEFORE TRUNCATE ON ledger_keys
    FOR EACH STATEMENT EXECUTE FUNCTION lis_refuse_change();

-- Break-glass reads by time range, and by actor (GET /audit/actors/{user}).
CREATE INDEX break_glass_log_at ON break_glass_log (at);
CREATE INDEX break_glass_log_by_actor ON break_glass_log (actor_id, at);
