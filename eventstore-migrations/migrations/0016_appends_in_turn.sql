-- The records of one order append in turn, and a command's append checks that the
-- records its rules read are as it read them (commands/src/reads.rs).
--
-- An order, its tubes and their results are separate records with their own sequences;
-- two commands on one record collide on the primary key, but two on different records of
-- one order did not: a test's cancellation (which looks for a release of its results)
-- and its result's release (which looks for a cancellation of its test) could both pass,
-- each having read the other's record before it was written. Now every append of an
-- order's record takes the order's advisory lock (class 7302423, key hashtext(order
-- id)) until it commits, then looks again, with a fresh snapshot (a VOLATILE plpgsql
-- function's statements each take their own), at what the command read: each record at
-- the version it had (0: none), and the number of releases (ResultAuthorised) of the
-- order's results, of one test (a release: one released value per ordered test) or of
-- all (a cancellation). Anything changed since and it raises SQLSTATE LIS01, writing
-- nothing; the ledger decides the command again on what is now stored. The fresh
-- snapshots are read committed's: at a stricter isolation level each query would read
-- the transaction's first snapshot, taken before the lock was granted, and could miss
-- the command it waited for, so the function refuses to run there.
--
-- An append that takes a snapshot of its record (every Nth event) writes it here too, in
-- the same statement: the order's turn is held for one statement, never across a round
-- trip to the client (a BEGIN, the append, the snapshot, a COMMIT). A snapshot written
-- meanwhile by another command is a conflict (SQLSTATE 23505, as two appends at one
-- sequence are), and the events are not kept either.

CREATE FUNCTION lis_append_in_turn(
    p_order text,
    p_aggregate_type text, p_aggregate_id text,
    p_sequences bigint[], p_event_types text[], p_event_versions text[],
    p_payloads jsonb[], p_metadata jsonb[],
    p_read_kinds text[], p_read_ids text[], p_read_tests text[], p_read_versions bigint[],
    p_snapshot jsonb, p_snapshot_last bigint, p_snapshot_current bigint
) RETURNS TABLE (appended_sequence bigint, appended_position bigint)
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    i int;
    now_at bigint;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'the ledger appends at read committed isolation, not %',
                current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state';
    END IF;
    PERFORM pg_advisory_xact_lock(7302423, hashtext(p_order));
    FOR i IN 1 .. coalesce(array_length(p_read_kinds, 1), 0) LOOP
        IF p_read_kinds[i] = 'releases' THEN
            -- As commands/src/lookup.rs counts them (index events_released_by_order).
            SELECT count(*) INTO now_at FROM events e
             WHERE e.event_type = 'ResultAuthorised' AND e.aggregate_type = 'Result'
               AND (e.payload -> 'ResultAuthorised' ->> 'order_id') = p_read_ids[i]
               AND (p_read_tests[i] IS NULL
                    OR e.payload -> 'ResultAuthorised' ->> 'test_code' = p_read_tests[i]);
        ELSE
            SELECT coalesce(max(e.sequence), 0) INTO now_at FROM events e
             WHERE e.aggregate_type = p_read_kinds[i] AND e.aggregate_id = p_read_ids[i];
        END IF;
        IF now_at <> p_read_versions[i] THEN
            RAISE EXCEPTION '% % % changed while the command was decided (% when read, % now)',
                    p_read_kinds[i], p_read_ids[i], coalesce(p_read_tests[i], ''),
                    p_read_versions[i], now_at
                USING ERRCODE = 'LIS01';
        END IF;
    END LOOP;
    RETURN QUERY
    INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
    SELECT p_aggregate_type, p_aggregate_id, u.sequence, u.event_type, u.event_version,
           u.payload::json, u.metadata::json
      FROM unnest(p_sequences, p_event_types, p_event_versions, p_payloads, p_metadata)
           AS u(sequence, event_type, event_version, payload, metadata)
     ORDER BY u.sequence
    RETURNING events.sequence, events.position;
    IF p_snapshot IS NULL THEN
        RETURN;
    ELSIF p_snapshot_current IS NULL THEN
        INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
        VALUES (p_aggregate_type, p_aggregate_id, p_snapshot_last, 1, p_snapshot::json);
    ELSE
        UPDATE snapshots
           SET last_sequence = p_snapshot_last, current_snapshot = p_snapshot_current + 1,
               payload = p_snapshot::json
         WHERE aggregate_type = p_aggregate_type AND aggregate_id = p_aggregate_id
           AND current_snapshot = p_snapshot_current;
        IF NOT FOUND THEN
            RAISE EXCEPTION '% % has a snapshot written since the command loaded it',
                    p_aggregate_type, p_aggregate_id
                USING ERRCODE = 'unique_violation';
        END IF;
    END IF;
END
$$;

REVOKE ALL ON FUNCTION lis_append_in_turn(text, text, text, bigint[], text[], text[], jsonb[], jsonb[], text[], text[], text[], bigint[], jsonb, bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lis_append_in_turn(text, text, text, bigint[], text[], text[], jsonb[], jsonb[], text[], text[], text[], bigint[], jsonb, bigint, bigint) TO lisledger_app;
