-- User administration and log-ins, recorded (GET /users, POST /users…, `lisledger users …`,
-- GET /audit/users, GET /audit/logins; docs/security.md).
--
-- Who may release results, and since when, is part of the audit trail: an assessor asks
-- who gave a person the pathologist role, when and why, and when their access ended.
-- Every change to `users` is therefore written to the append-only `user_changes` by a
-- trigger, in the same transaction, with the actor, their role, the reason and the
-- request id that the change names for its transaction (`lis.actor_id`, `lis.actor_role`,
-- `lis.reason`, `lis.request_id`); a change that names none is refused. Users are never
-- deleted (disabled instead) nor renamed.
--
-- Each change also bumps the user's token generation: a token carries the generation it
-- was issued under, and the API refuses one issued before the user was disabled, given
-- another role or a new password.

ALTER TABLE users ADD COLUMN token_generation bigint NOT NULL DEFAULT 0;
-- A password another person set over the API (an admin adding the user or resetting
-- it) is temporary: its user must change it before doing anything else.
ALTER TABLE users ADD COLUMN password_must_change boolean NOT NULL DEFAULT false;

CREATE TABLE user_changes
(
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    username    text        NOT NULL,
    change      text        NOT NULL CHECK (change IN ('existing', 'added', 'disabled', 'enabled',
                                                       'role-changed', 'password-reset',
                                                       'password-changed')),
    role_before text,
    role_after  text        NOT NULL,
    actor_id    text        NOT NULL CHECK (length(btrim(actor_id)) > 0),
    actor_role  text        NOT NULL CHECK (length(btrim(actor_role)) > 0),
    reason      text        NOT NULL CHECK (length(btrim(reason)) > 0),
    request_id  text
);
CREATE INDEX user_changes_at ON user_changes (at, id);
CREATE INDEX user_changes_by_user ON user_changes (username, at);
CREATE TRIGGER user_changes_no_update BEFORE UPDATE ON user_changes
    FOR EACH ROW EXECUTE FUNCTION lis_refuse_change();
CREATE TRIGGER user_changes_no_delete BEFORE DELETE ON user_changes
    FOR EACH ROW EXECUTE FUNCTION lis_refuse_change();
CREATE TRIGGER user_changes_no_truncate BEFORE TRUNCATE ON user_changes
    FOR EACH STATEMENT EXECUTE FUNCTION lis_refuse_change();

-- The accounts already there when the record began, so that every user has one.
INSERT INTO user_changes (username, change, role_after, actor_id, actor_role, reason)
SELECT username, 'existing', role, 'migration 0012', 'system',
       'present when user changes began to be recorded (added ' || created_at::text
           || CASE WHEN disabled THEN '; disabled' ELSE '' END || ')'
  FROM users
 ORDER BY created_at, username;

-- What a change must name, and what never changes; bumps the token generation.
CREATE FUNCTION users_guard() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'user % is never deleted (disable them instead)', OLD.username
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF coalesce(btrim(current_setting('lis.actor_id', true)), '') = ''
        OR coalesce(btrim(current_setting('lis.actor_role', true)), '') = ''
        OR coalesce(btrim(current_setting('lis.reason', true)), '') = '' THEN
        RAISE EXCEPTION 'a change to users must name its actor, role and reason (lis.actor_id, lis.actor_role, lis.reason)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.disabled THEN
            RAISE EXCEPTION 'user % cannot be added disabled', NEW.username
                USING ERRCODE = 'check_violation';
        END IF;
        NEW.token_generation := 0;
        RETURN NEW;
    END IF;
    IF NEW.username <> OLD.username OR NEW.created_at <> OLD.created_at THEN
        RAISE EXCEPTION 'user %''s name and creation time never change', OLD.username
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- Whether a password is temporary changes only with the password itself.
    IF NEW.password_must_change <> OLD.password_must_change
        AND NEW.password_hash = OLD.password_hash THEN
        RAISE EXCEPTION 'user %''s password stays temporary until it is changed', OLD.username
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    NEW.token_generation := OLD.token_generation
        + CASE WHEN (NEW.role, NEW.disabled, NEW.password_hash)
                    IS DISTINCT FROM (OLD.role, OLD.disabled, OLD.password_hash) THEN 1 ELSE 0 END;
    RETURN NEW;
END
$$;
CREATE TRIGGER users_guard BEFORE INSERT OR UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION users_guard();
CREATE TRIGGER users_no_truncate BEFORE TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION lis_refuse_change();

-- The record of each change, written as the owner: the application role cannot write
-- `user_changes` itself, only change `users` and have the change recorded.
CREATE FUNCTION users_record() RETURNS trigger
    -- pg_temp last: otherwise a session's temporary table named user_changes would take
    -- the record's place (temporary tables are searched first unless placed).
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS
$$
DECLARE
    actor      text := btrim(current_setting('lis.actor_id', true));
    actor_role text := btrim(current_setting('lis.actor_role', true));
    why        text := btrim(current_setting('lis.reason', true));
    request    text := nullif(current_setting('lis.request_id', true), '');
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO public.user_changes (username, change, role_after, actor_id, actor_role, reason, request_id)
        VALUES (NEW.username, 'added', NEW.role, actor, actor_role, why, request);
        RETURN NULL;
    END IF;
    IF NEW.role <> OLD.role THEN
        INSERT INTO public.user_changes (username, change, role_before, role_after, actor_id, actor_role, reason, request_id)
        VALUES (NEW.username, 'role-changed', OLD.role, NEW.role, actor, actor_role, why, request);
    END IF;
    IF NEW.disabled <> OLD.disabled THEN
        INSERT INTO public.user_changes (username, change, role_before, role_after, actor_id, actor_role, reason, request_id)
        VALUES (NEW.username, CASE WHEN NEW.disabled THEN 'disabled' ELSE 'enabled' END,
                OLD.role, NEW.role, actor, actor_role, why, request);
    END IF;
    -- A password its own user set, giving the current one (POST /auth/password says so in
    -- lis.own_password), is changed; one set by anyone else is reset.
    IF NEW.password_hash <> OLD.password_hash THEN
        INSERT INTO public.user_changes (username, change, role_before, role_after, actor_id, actor_role, reason, request_id)
        VALUES (NEW.username,
                CASE WHEN actor = NEW.username AND current_setting('lis.own_password', true) = 'yes'
                     THEN 'password-changed' ELSE 'password-reset' END,
                OLD.role, NEW.role, actor, actor_role, why, request);
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION users_record() FROM PUBLIC;
CREATE TRIGGER users_record AFTER INSERT OR UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION users_record();

-- A person's role only (`system` is the ledger itself), unless disabled. NOT VALID: an
-- account made before this check is left as it is (log-in refuses a system account),
-- and can still be disabled, but not enabled again.
ALTER TABLE users ADD CONSTRAINT users_person_role
    CHECK (disabled OR role IN ('reception', 'phlebotomist', 'technologist', 'pathologist',
                                'clinician', 'auditor', 'analyst', 'admin')) NOT VALID;

REVOKE ALL ON user_changes FROM PUBLIC;
-- The ledger reads the record (auditors; the API's view of revoked tokens) and changes
-- a user's role, password and whether they are disabled; never the record itself.
GRANT SELECT ON user_changes TO lisledger_app;
-- The ledger names a new user's name, role and password; the database sets the rest.
REVOKE INSERT ON users FROM lisledger_app;
GRANT INSERT (username, role, password_hash, password_must_change) ON users TO lisledger_app;
GRANT UPDATE (role, password_hash, disabled, password_must_change) ON users TO lisledger_app;

-- Every log-in attempt (POST /auth/login), for the auditors' review of who had access and
-- used it (GET /audit/logins, and each user's on their activity): when, which account,
-- whether it succeeded, from which address. An attempt naming no account keeps no name:
-- what was typed there may be a password. Append-only; written by the ledger.
CREATE TABLE logins
(
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    username    text,
    succeeded   boolean     NOT NULL,
    client_addr text,
    CHECK (username IS NOT NULL OR NOT succeeded)
);
CREATE INDEX logins_at ON logins (at, id);
CREATE INDEX logins_by_user ON logins (username, at);
CREATE TRIGGER logins_no_update BEFORE UPDATE ON logins
    FOR EACH ROW EXECUTE FUNCTION lis_refuse_change();
CREATE TRIGGER logins_no_delete BEFORE DELETE ON logins
    FOR EACH ROW EXECUTE FUNCTION lis_refuse_change();
CREATE TRIGGER logins_no_truncate BEFORE TRUNCATE ON logins
    FOR EACH STATEMENT EXECUTE FUNCTION lis_refuse_change();
REVOKE ALL ON logins FROM PUBLIC;
GRANT SELECT ON logins TO lisledger_app;
GRANT INSERT (username, succeeded, client_addr) ON logins TO lisledger_app;

-- Every trigger function of the ledger resolves names in the system catalog first and
-- never in a schema a session puts before it: the application role may create schemas
-- (for the read models), and an operator of its own (`=` for text, say) placed ahead of
-- pg_catalog in its search_path would otherwise run inside these guards. The SQL helpers
-- they call run under the caller's path, so they are covered and stay inlinable.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure
          FROM pg_proc p
          JOIN pg_namespace n ON n.oid = p.pronamespace
          JOIN pg_language l ON l.oid = p.prolang
         WHERE n.nspname = 'public' AND l.lanname = 'plpgsql' AND p.proconfig IS NULL
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, public, pg_temp', f);
    END LOOP;
END
$$;
