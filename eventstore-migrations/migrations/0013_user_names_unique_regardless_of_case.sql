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
    -- this lock has committed, and (a volatile function's query, read committed) sees it.
    PERFORM pg_advisory_xact_lock(hashtext('lisledger.users.name'));
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
