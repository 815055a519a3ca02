-- The versioned test catalogue: every import is a new version; old versions are kept
-- (results name the version they were flagged with) and can never change.

CREATE TABLE catalogue_versions
(
    version       integer PRIMARY KEY CHECK (version >= 1),
    imported_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    imported_by   text        NOT NULL CHECK (imported_by <> ''),
    source_name   text        NOT NULL,
    source_sha256 bytea       NOT NULL CHECK (octet_length(source_sha256) = 32),
    test_count    integer     NOT NULL CHECK (test_count >= 1)
);

CREATE TABLE catalogue_tests
(
    version    integer NOT NULL REFERENCES catalogue_versions (version),
    code       text    NOT NULL,
    loinc      text    NOT NULL,
    name       text    NOT NULL,
    department text    NOT NULL,
    -- The whole definition as the domain reads it (lis_domain::catalogue::TestDefinition).
    definition json    NOT NULL,
    PRIMARY KEY (version, code)
);

CREATE TRIGGER catalogue_versions_no_update BEFORE UPDATE OR DELETE ON catalogue_versions
    FOR EACH ROW EXECUTE FUNCTION lis_refuse_change();
CREATE TRIGGER catalogue_versions_no_truncate BEFORE TRUNCATE ON catalogue_versions
    FOR EACH STATEMENT EXECUTE FUNCTION lis_refuse_change();
CREATE TRIGGER catalogue_tests_no_update BEFORE UPDATE OR DELETE ON catalogue_tests
    FOR EACH ROW EXECUTE FUNCTION lis_refuse_change();
CREATE TRIGGER catalogue_tests_no_truncate BEFORE TRUNCATE ON catalogue_tests
    FOR EACH STATEMENT EXECUTE FUNCTION lis_refuse_change();

REVOKE ALL ON catalogue_versions, catalogue_tests FROM PUBLIC;
GRANT SELECT, INSERT ON catalogue_versions, catalogue_tests TO lisledger_app;
