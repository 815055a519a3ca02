-- Two costs every append paid, measured with pgbench on the events table (docs/benchmarks.md):
--
-- 1. events_notify (0004). A transaction that NOTIFYs takes a database-wide lock from
--    pre-commit until its commit is done, WAL flush included, so appending transactions
--    committed one at a time and never shared a flush (32 clients: ~1,500 against ~5,800
--    inserts/s without it). The feed's readers poll instead (every 25 ms when idle).
-- 2. lis_event_hash (0001) was a SQL function that the plpgsql seal trigger could not
--    inline, so its body was planned again for every row (~43 µs a row in the trigger).
--    As plpgsql its plan is kept for the session (~10 µs). The bytes hashed, and so every
--    hash, are unchanged (tests/tests/audit_trail.rs compares with the Rust verifier).

DROP TRIGGER events_notify ON events;
DROP FUNCTION events_notify();

CREATE OR REPLACE FUNCTION lis_event_hash(
    prev_hash bytea, aggregate_type text, aggregate_id text, sequence bigint,
    event_type text, event_version text, payload json, metadata json, recorded_at timestamptz
) RETURNS bytea
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
BEGIN
    RETURN sha256(
        convert_to('lisledger.event.v1', 'UTF8')
        || prev_hash
        || lis_frame(convert_to(aggregate_type, 'UTF8'))
        || lis_frame(convert_to(aggregate_id, 'UTF8'))
        || int8send(sequence)
        || lis_frame(convert_to(event_type, 'UTF8'))
        || lis_frame(convert_to(event_version, 'UTF8'))
        || lis_frame(convert_to(payload::text, 'UTF8'))
        || lis_frame(convert_to(metadata::text, 'UTF8'))
        || int8send(lis_epoch_micros(recorded_at)));
END
$$;
