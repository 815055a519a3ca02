#!/usr/bin/env bash
# Checks FHIR R4 JSON against the specification with HAPI FHIR's validator
# (deploy/fhir/FhirCheck.java), offline; an external checker of the API's FHIR answers.
# Usage: deploy/fhir-check.sh install | FILE…   (deploy/java-check.sh does the work)
exec "$(dirname "$0")/java-check.sh" fhir FhirCheck hapi-fhir-validation- "$@"
