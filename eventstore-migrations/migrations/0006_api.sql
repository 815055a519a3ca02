-- The HTTP API's own tables: users (Argon2id hashes; no default accounts) and the
-- responses of commands sent with an Idempotency-Key.

CREATE TABLE users
(
    username      text PRIMARY KEY,
    role          text        NOT NULL,
    password_hash text        NOT NULL,
    disabled      boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE idempotency_keys
(
    actor_id        text        NOT NULL,
    key             text        NOT NULL,
    request_sha256  bytea       NOT NULL,
    response_status integer,
    response_body   json,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    completed_at    timestamptz,
    PRIMARY KEY (actor_id, key)
);

REVOKE ALL ON users, idempotency_keys FROM PUBLIC;
GRANT SELECT, INSERT ON users TO lisledger_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO lisledger_app;
