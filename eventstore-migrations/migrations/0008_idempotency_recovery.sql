-- Recovering an Idempotency-Key whose first attempt died (the API killed, the database
-- restarted) between claiming the key and storing the response: the claim records the
-- command id the attempt writes its events with and the last event position before it,
-- so a retry can tell "it committed" (answer from its events) from "it never did" (run
-- it now). See api/src/http/idempotency.rs.

ALTER TABLE idempotency_keys
    ADD COLUMN command_id   uuid   NOT NULL DEFAULT gen_random_uuid(),
    ADD COLUMN events_after bigint NOT NULL DEFAULT 0;
