-- Patient index: the stable pseudonymous patient id for each MRN, so that a patient's
-- results can be found across orders. A lookup table, not part of the audit trail (every
-- order event carries the patient id it was placed with).

CREATE TABLE patient_index
(
    mrn        text PRIMARY KEY,
    patient_id uuid NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

REVOKE ALL ON patient_index FROM PUBLIC;
GRANT SELECT, INSERT ON patient_index TO lisledger_app;
