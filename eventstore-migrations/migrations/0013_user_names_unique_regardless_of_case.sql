-- A user name names one person in every audit record: `Dr.Rao` and `dr.rao` must not be
-- two accounts. Names stay as written (and log-in matches them exactly), but a new
-- name that differs from an existing one only in case is refused.
--
-- Not a unique index on lower(username): a database may already hold such a pair, and
-- users are never renamed or deleted, so the index could never be built there. The
-- trigger keeps any new pair out; existing pairs are listed when this migration runs.

-- What the trigger looks names up by.
CREATE INDEX users_name_folded ON users (lower(username));

CREATE FUNCTION users_name_unique() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS
$$
DECLARE
    existing text;
BEGIN
    -- One new user at a time: the look-up below runs after any other insert holding
    -- this lock has committed, and sees it, as each query of a volatile function takes
    -- a fresh snapshot at read committed. At a stricter level it would read the
    -- transaction's first snapshot and could miss it: refused.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'users are added at read committed isolation, not %', current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state';
    END IF;
    -- Lock class 7302422 (the ledger's advisory locks are 7302415 onwards), key 1.
    PERFORM pg_advisory_xact_lock(7302422, 1);
    SELECT username INTO existing FROM public.users
     WHERE lower(username) = lower(NEW.username) AND username <> NEW.username
     LIMIT 1;
    IF existing IS NOT NULL THEN
        RAISE EXCEPTION 'user % already exists as %: names are unique regardless of case', NEW.username, existing
            USING ERRCODE = 'unique_violation', CONSTRAINT = 'users_name_unique';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER users_name_unique BEFORE INSERT ON users
    FOR EACH ROW EXECUTE FUNCTION users_name_unique();

DO $$
DECLARE
    pairs text;
BEGIN
    SELECT string_agg(names, '; ') INTO pairs
      FROM (SELECT string_agg(username, ', ' ORDER BY username) AS names
              FROM users GROUP BY lower(username) HAVING count(*) > 1) d;
    IF pairs IS NOT NULL THEN
        RAISE WARNING 'user names that differ only in case, kept as they are (disable the one not in use): %', pairs;
    END IF;
END
$$;
