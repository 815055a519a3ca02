#!/usr/bin/env bash
# Checks HL7 v2.5.1 ORU^R01 messages (ER7) with HAPI HL7v2's parser and validation
# (deploy/hl7/Hl7Check.java); an external checker of the API's HL7 answers.
# Usage: deploy/hl7-check.sh install | FILE…   (deploy/java-check.sh does the work)
exec "$(dirname "$0")/java-check.sh" hl7 Hl7Check hapi-base- "$@"
