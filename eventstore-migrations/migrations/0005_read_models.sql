-- Read models live in one schema per projection (proj_<name>), created and swapped by
-- the projection workers themselves (`lisledger projections rebuild` builds a fresh
-- schema and renames it into place), so the application role may create schemas in
-- this database. It still only has INSERT and SELECT on the event store.
DO $$
BEGIN
    EXECUTE format('GRANT CREATE ON DATABASE %I TO lisledger_app', current_database());
END
$$;
