-- Lock-out after failed log-ins (docs/security.md). An account with `after` failed
-- log-ins within the last `window_secs` is refused without its password being checked,
-- until the oldest of those `after` leaves the window. Only failures since the account's
-- last successful log-in, and since its password was last reset or changed or it was
-- last enabled, count: an administrator's reset unlocks it. Attempts refused while
-- locked are recorded (`locked`) but do not count: the password was not tried.
--
-- Counted from `logins` itself, so every instance of `serve` sees the same count.

ALTER TABLE logins
    ADD COLUMN locked boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT logins_locked_not_succeeded CHECK (NOT (locked AND succeeded));
GRANT INSERT (locked) ON logins TO lisledger_app;

-- Until when `name` may not log in, or NULL (never, if `after` is 0).
CREATE FUNCTION lis_login_locked_until(name text, after integer, window_secs double precision)
    RETURNS timestamptz
    LANGUAGE sql VOLATILE SET search_path = pg_catalog, public, pg_temp AS
$$
SELECT f.at + make_interval(secs => window_secs)
  FROM logins f
 WHERE after > 0 AND f.username = name AND NOT f.succeeded AND NOT f.locked
   AND f.at > clock_timestamp() - make_interval(secs => window_secs)
   AND f.at > coalesce((SELECT max(s.at) FROM logins s WHERE s.username = name AND s.succeeded),
                       '-infinity')
   AND f.at > coalesce((SELECT max(c.at) FROM user_changes c
                         WHERE c.username = name
                           AND c.change IN ('password-reset', 'password-changed', 'enabled')),
                       '-infinity')
 ORDER BY f.at DESC
OFFSET greatest(after, 1) - 1 LIMIT 1
$$;
REVOKE ALL ON FUNCTION lis_login_locked_until(text, integer, double precision) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lis_login_locked_until(text, integer, double precision) TO lisledger_app;
