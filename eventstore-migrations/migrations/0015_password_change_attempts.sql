-- Wrong current passwords given in password changes (`POST /auth/password`) are recorded
-- in `logins` beside the log-ins, as attempts of kind 'password-change' (docs/security.md):
-- an auditor sees a token being used to guess the password behind it, and every instance
-- of `serve` counts the same strikes (they were counted in each instance's memory, and
-- recorded nowhere). A log-in's lock-out counts log-ins only, as before.

ALTER TABLE logins
    ADD COLUMN kind text NOT NULL DEFAULT 'log-in',
    ADD CONSTRAINT logins_kind CHECK (kind IN ('log-in', 'password-change')),
    ADD CONSTRAINT logins_password_change_names_its_account
        CHECK (kind = 'log-in' OR username IS NOT NULL);
GRANT INSERT (kind) ON logins TO lisledger_app;

-- Until when `name` may not make an attempt of kind `attempt`, or NULL: `after` failed
-- attempts of that kind within the last `window_secs` (0: never), counted since its last
-- successful one and since its password was last reset or changed or it was last
-- enabled; attempts refused while locked do not count. Migration 0014's rule, by kind.
CREATE FUNCTION lis_attempts_locked_until(name text, attempt text, after integer,
                                          window_secs double precision)
    RETURNS timestamptz
    LANGUAGE sql VOLATILE SET search_path = pg_catalog, public, pg_temp AS
$$
SELECT f.at + make_interval(secs => window_secs)
  FROM logins f
 WHERE after > 0 AND f.username = name AND f.kind = attempt AND NOT f.succeeded AND NOT f.locked
   AND f.at > clock_timestamp() - make_interval(secs => window_secs)
   AND f.at > coalesce((SELECT max(s.at) FROM logins s
                         WHERE s.username = name AND s.kind = attempt AND s.succeeded),
                       '-infinity')
   AND f.at > coalesce((SELECT max(c.at) FROM user_changes c
                         WHERE c.username = name
                           AND c.change IN ('password-reset', 'password-changed', 'enabled')),
                       '-infinity')
 ORDER BY f.at DESC
OFFSET greatest(after, 1) - 1 LIMIT 1
$$;
REVOKE ALL ON FUNCTION lis_attempts_locked_until(text, text, integer, double precision) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lis_attempts_locked_until(text, text, integer, double precision)
    TO lisledger_app;

CREATE OR REPLACE FUNCTION lis_login_locked_until(name text, after integer, window_secs double precision)
    RETURNS timestamptz
    LANGUAGE sql VOLATILE SET search_path = pg_catalog, public, pg_temp AS
$$
SELECT lis_attempts_locked_until(name, 'log-in', after, window_secs)
$$;
