-- The event store: postgres-es's `events` and `snapshots` tables, hardened into an audit trail.
--
-- Every row gets a global position, the writing transaction's id (xid8, for the gap-free
-- reader), recorded_at (clock_timestamp) and a per-aggregate SHA-256 hash chain computed
-- here, on insert, so that no code path can skip it. Rows can never be updated, deleted
-- or truncated. The hash layout is documented in docs/architecture.md and recomputed
-- independently by `lisledger audit verify`.

CREATE TABLE events
(
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    sequence       bigint NOT NULL CHECK (sequence >= 1),
    event_type     text   NOT NULL,
    event_version  text   NOT NULL,
    payload        json   NOT NULL,
    metadata       json   NOT NULL,
    position       bigint GENERATED ALWAYS AS IDENTITY,
    tx_id          xid8        NOT NULL,
    recorded_at    timestamptz NOT NULL,
    prev_hash      bytea       NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash           bytea       NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence),
    UNIQUE (position),
    -- Every event names who wrote it and in what role.
    CONSTRAINT events_metadata_names_actor CHECK (
        json_typeof(metadata) = 'object'
        AND coalesce(metadata ->> 'actor_id', '') <> ''
        AND coalesce(metadata ->> 'actor_role', '') <> ''
    )
);

-- The ordered feed for the relay and projections: (tx_id, position).
CREATE INDEX events_feed ON events (tx_id, position);

-- postgres-es snapshots: a cache of aggregate state, not part of the audit trail.
CREATE TABLE snapshots
(
    aggregate_type   text   NOT NULL,
    aggregate_id     text   NOT NULL,
    last_sequence    bigint NOT NULL CHECK (last_sequence >= 0),
    current_snapshot bigint NOT NULL CHECK (current_snapshot >= 0),
    payload          json   NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- Length-prefixed framing: u32 big-endian byte length, then the bytes.
CREATE FUNCTION lis_frame(b bytea) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT int4send(octet_length(b)) || b $$;

-- Microseconds since the Unix epoch, independent of TimeZone and DateStyle.
CREATE FUNCTION lis_epoch_micros(t timestamptz) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT (extract(epoch FROM t) * 1000000)::bigint $$;

-- The hash of one event (layout: docs/architecture.md, "The hash chain").
CREATE FUNCTION lis_event_hash(
    prev_hash bytea, aggregate_type text, aggregate_id text, sequence bigint,
    event_type text, event_version text, payload json, metadata json, recorded_at timestamptz
) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
SELECT sha256(
    convert_to('lisledger.event.v1', 'UTF8')
    || prev_hash
    || lis_frame(convert_to(aggregate_type, 'UTF8'))
    || lis_frame(convert_to(aggregate_id, 'UTF8'))
    || int8send(sequence)
    || lis_frame(convert_to(event_type, 'UTF8'))
    || lis_frame(convert_to(event_version, 'UTF8'))
    || lis_frame(convert_to(payload::text, 'UTF8'))
    || lis_frame(convert_to(metadata::text, 'UTF8'))
    || int8send(lis_epoch_micros(recorded_at)))
$$;

CREATE FUNCTION events_seal() RETURNS trigger
    LANGUAGE plpgsql
AS $$
DECLARE
    previous bytea;
BEGIN
    -- Server-side facts: never taken from the client.
    NEW.tx_id := pg_current_xact_id();
    NEW.recorded_at := date_trunc('microseconds', clock_timestamp());
    IF NEW.sequence = 1 THEN
        previous := decode(repeat('00', 32), 'hex');
    ELSE
        SELECT e.hash INTO previous
          FROM events e
         WHERE e.aggregate_type = NEW.aggregate_type
           AND e.aggregate_id = NEW.aggregate_id
           AND e.sequence = NEW.sequence - 1;
        IF previous IS NULL THEN
            RAISE EXCEPTION 'event % of % % has no predecessor: the chain would have a gap',
                NEW.sequence, NEW.aggregate_type, NEW.aggregate_id
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
    END IF;
    NEW.prev_hash := previous;
    NEW.hash := lis_event_hash(previous, NEW.aggregate_type, NEW.aggregate_id, NEW.sequence,
                               NEW.event_type, NEW.event_version, NEW.payload, NEW.metadata,
                               NEW.recorded_at);
    RETURN NEW;
END
$$;

CREATE TRIGGER events_seal
    BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_seal();

CREATE FUNCTION lis_refuse_change() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION lis_refuse_change();
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION lis_refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION lis_refuse_change();

-- Look-ups the aggregates make through the command layer.
-- Accession numbers are unique in the lab: enforced by the store itself.
CREATE UNIQUE INDEX events_accession_unique ON events ((
    coalesce(payload -> 'SampleCollected' ->> 'accession_number',
             payload -> 'AliquotCreated' ->> 'accession_number')))
    WHERE event_type IN ('SampleCollected', 'AliquotCreated');
CREATE INDEX events_released_by_patient ON events (
    (payload -> 'ResultAuthorised' ->> 'patient_id'),
    (payload -> 'ResultAuthorised' ->> 'test_code'))
    WHERE event_type = 'ResultAuthorised';
CREATE INDEX events_released_by_order ON events ((payload -> 'ResultAuthorised' ->> 'order_id'))
    WHERE event_type = 'ResultAuthorised';

-- Human order numbers.
CREATE SEQUENCE order_number_seq;

-- The application role may only add to and read the trail.
REVOKE ALL ON events, snapshots FROM PUBLIC;
GRANT SELECT, INSERT ON events TO lisledger_app;
GRANT SELECT, INSERT, UPDATE ON snapshots TO lisledger_app;
GRANT USAGE ON SEQUENCE order_number_seq TO lisledger_app;
