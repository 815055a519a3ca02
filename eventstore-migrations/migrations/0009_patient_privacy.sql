-- Patient privacy by crypto-shredding (docs/privacy.md).
--
-- Identity enters events only sealed under a per-patient data key. The data keys live
-- here, wrapped by the key-encryption key (KEK) from configuration, never in clear.
-- Erasing a patient destroys their wrapped key: the sealed identity in every event
-- becomes unreadable while the events and their hash chain stay untouched.

-- OrderPlaced 1.0 (pre-release) carried identity in clear: such a ledger can never be
-- made erasable, so it is refused here rather than half-converted.
DO
$$
    BEGIN
        IF EXISTS (SELECT 1 FROM events WHERE event_type = 'OrderPlaced' AND event_version = '1.0.0') THEN
            RAISE EXCEPTION 'this ledger holds OrderPlaced 1.0 events, which carry patient identity in clear (a pre-release format) and cannot be made erasable; start a new database (docs/privacy.md)';
        END IF;
    END
$$;

-- Keys of the ledger itself, wrapped by the KEK: `kek-check` (a known value, so that a
-- wrong KEK is refused at start-up instead of producing garbage) and `mrn-index` (the
-- HMAC key of the patient pseudonym index).
CREATE TABLE ledger_keys
(
    name       text PRIMARY KEY,
    kek_id     text        NOT NULL,
    wrapped    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE patient_keys
(
    patient_id  uuid PRIMARY KEY,
    kek_id      text        NOT NULL,
    wrapped_key bytea,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    erased_at   timestamptz,
    CONSTRAINT erased_means_no_key CHECK ((wrapped_key IS NULL) = (erased_at IS NOT NULL))
);

-- A destroyed key never comes back, and the erased marker stays (so an erased patient is
-- told apart from an unknown one).
CREATE FUNCTION patient_keys_guard() RETURNS trigger
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
    RETURN NEW;
END
$$;
CREATE TRIGGER patient_keys_guard BEFORE UPDATE OR DELETE ON patient_keys
    FOR EACH ROW EXECUTE FUNCTION patient_keys_guard();

-- The pseudonym index replaces 0003's `patient_index`, which held MRNs in clear: the MRN
-- is now kept only as HMAC-SHA-256 under the `mrn-index` key. Erasure deletes the row, so
-- the same MRN later starts a new pseudonym. (Pre-release: no deployment holds data in
-- the old table.)
DROP TABLE patient_index;
CREATE TABLE patient_pseudonyms
(
    mrn_hmac   bytea PRIMARY KEY,
    patient_id uuid        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- A patient's latest sealed identity (GET /patients/{id}) without a scan of the log.
CREATE INDEX events_placed_by_patient ON events ((payload -> 'OrderPlaced' ->> 'patient_id'), position)
    WHERE event_type = 'OrderPlaced';

-- Break-glass reads of identity by auditors: append-only, like the events.
CREATE TABLE break_glass_log
(
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor_id   text        NOT NULL,
    actor_role text        NOT NULL,
    reason     text        NOT NULL CHECK (length(btrim(reason)) > 0),
    resource   text        NOT NULL,
    request_id text
);
CREATE TRIGGER break_glass_log_no_update BEFORE UPDATE ON break_glass_log
    FOR EACH ROW EXECUTE FUNCTION lis_refuse_change();
CREATE TRIGGER break_glass_log_no_delete BEFORE DELETE ON break_glass_log
    FOR EACH ROW EXECUTE FUNCTION lis_refuse_change();
CREATE TRIGGER break_glass_log_no_truncate BEFORE TRUNCATE ON break_glass_log
    FOR EACH STATEMENT EXECUTE FUNCTION lis_refuse_change();

REVOKE ALL ON ledger_keys, patient_keys, patient_pseudonyms, break_glass_log FROM PUBLIC;
GRANT SELECT, INSERT ON ledger_keys TO lisledger_app;
GRANT SELECT, INSERT ON patient_keys TO lisledger_app;
GRANT UPDATE (wrapped_key, erased_at) ON patient_keys TO lisledger_app;
GRANT SELECT, INSERT, DELETE ON patient_pseudonyms TO lisledger_app;
GRANT SELECT, INSERT ON break_glass_log TO lisledger_app;
