"""Lab data for deploy/schemathesis.sh (a schemathesis hooks file, not product code).

Generated bodies are valid by the OpenAPI schemas, but the lab's rules also ask for facts
no schema can carry: a specimen's type and container are those the catalogue names for
its tests, and a result is for a test of its specimen, in that test's unit. Where a
request already names real tests or a real specimen (the OpenAPI links carry them from
the order and the receipt), this fills those facts in from the test catalogue and the
API, so that chains of calls go on to results, verification and release. Anything else
is sent as generated.

It also adds one check: a request the API refuses (any 4xx) wrote no event. The event
store's size is read before and after each call (schemathesis runs one call at a time).
"""

import csv
import os
import re

import psycopg
import requests
import schemathesis

BASE = os.environ["LIS_ST_BASE"]
TOKEN = os.environ["ST_TOKEN_PATHOLOGIST"]
with open(os.environ["LIS_ST_CATALOGUE"], newline="") as f:
    CATALOGUE = {row["code"]: row for row in csv.DictReader(f)}


def _tube(tests):
    """The catalogue rows of `tests` that share the first one's specimen and container."""
    rows = [CATALOGUE.get(t.strip().upper()) for t in tests if isinstance(t, str)]
    if not rows or rows[0] is None:
        return None
    first = rows[0]
    return [r for r in rows if r and (r["specimen"], r["container"]) == (first["specimen"], first["container"])]


def _value(row):
    if row["result_kind"] == "coded":
        return {"kind": "coded", "answer": row["allowed_values"].split("|")[0]}
    low, high = row["ref_low_male"], row["ref_high_male"]
    value = (float(low) + float(high)) / 2 if low and high else 1.0
    return {"kind": "numeric", "value": value, "unit": row["unit_ucum"]}


_EVENTS = psycopg.connect(os.environ["LIS_ST_EVENTS_URL"], autocommit=True)
_before = {"events": None}


def _event_count():
    return _EVENTS.execute("SELECT count(*) FROM events").fetchone()[0]


@schemathesis.check
def refused_input_writes_no_event(ctx, response, case):
    """A 4xx answer left the event store as it was before the call."""
    before = _before["events"]
    if before is None or not 400 <= response.status_code < 500:
        return None
    after = _event_count()
    if after != before:
        raise AssertionError(
            f"refused with {response.status_code}, yet the event store went from "
            f"{before} to {after} events"
        )
    return None


@schemathesis.hook
def before_call(context, case, kwargs):
    _before["events"] = _event_count()
    label = context.operation.label if context.operation else ""
    body = case.body if isinstance(case.body, dict) else None
    if body is None:
        return
    if label == "POST /samples" and isinstance(body.get("tests"), list):
        tube = _tube(body["tests"])
        if tube:
            body["tests"] = sorted({r["code"] for r in tube})
            body["specimen_type"] = tube[0]["specimen"]
            body["container"] = tube[0]["container"]
    elif label == "POST /results" and isinstance(body.get("sample_id"), str):
        try:
            sample = requests.get(
                f"{BASE}/samples/{body['sample_id']}",
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=5,
            )
        except requests.RequestException:
            return
        if sample.status_code != 200:
            return
        rows = [CATALOGUE[t] for t in sample.json().get("tests") or [] if t in CATALOGUE]
        if rows:
            body["test_code"] = rows[0]["code"]
            body["value"] = _value(rows[0])


# The documented Idempotency-Key (api/src/http/openapi.rs, api/src/http/idempotency.rs).
_KEY = re.compile(r"[!-~]([ -~]*[!-~])?")
_KEY_MAX = 200


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Drops one false positive, and only it: "schema-violating request accepted" for an
    Idempotency-Key that HTTP itself turns into a valid one. HTTP strips the spaces and
    tabs around a header's value (RFC 9110, section 5.5), so a key generated with them
    reaches the API without them; and a header the client did not send is no key at all.
    The decision is made on the request as sent. Every other failure is kept."""
    if failure.code != "ST201" or "parameter `Idempotency-Key` in header" not in failure.message:
        return True
    sent = response.request.headers.get("Idempotency-Key")
    if sent is None:
        return False
    if isinstance(sent, bytes):
        sent = sent.decode("latin-1")
    received = sent.strip(" \t")
    return not (_KEY.fullmatch(received) and len(received) <= _KEY_MAX)
