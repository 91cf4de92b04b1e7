"""The OpenAPI schema as a contract: schemathesis generates requests for every operation in
GET /openapi.json and sends them through the real gateway with the admin key, so that every
route is reachable.

Each response must be a documented status code other than 5xx, with the documented content
type, headers and body schema. A 429 is a valid response: the gateway limits each key to 50
requests per second with a burst of 100, and the schema documents the 429 with its body and
Retry-After header. The run is paced at 20 requests per second, below that limit, so other
tests that use the admin key afterwards start with a full bucket.

Size and time: per operation, at most `MAX_EXAMPLES` cases that match the schema (positive),
as many that break it (negative), and the examples that the schema declares. At 20 requests
per second that is under a minute for the dozen operations (2 cores, with the stack up). The
valid cases store about a hundred rows, which the sink receives as that many confirmations
plus alerts for low ratings, far below the load of the chaos tests. Each row is read back and
recorded for the after-shutdown checks of test_pipeline.py. The test prints the responses per
operation and status.

The test drives schemathesis through its Python API (`as_strategy` with hypothesis) because
its pytest plugin (`schemathesis.pytest.from_fixture`, 4.32.5) fails under pytest 9.2 with
AttributeError: 'Function' object has no attribute '_nodeid'. So schemathesis's coverage
phase does not run here.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.conftest import Stack
from tests.integration.roundtrip import check_and_record, wait_for_confirmations

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 40
REQUESTS_PER_S = 20
CONTRACT_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
FORM_TYPE = "application/x-www-form-urlencoded"

created_ids: set[str] = set()
# Responses per operation and status, printed at the end so that a run shows what it covered.
response_counts: Counter[str] = Counter()


def load_schema(stack: Stack) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            "rate-limit": f"{REQUESTS_PER_S}/s",
            "request-timeout": 60,
            # Without this, negative cases often break the X-API-Key header, and the gateway
            # rejects them with 401 before the route receives the broken body or parameter.
            "generation": {"database": "none", "with-security-parameters": False},
        }
    )
    return schemathesis.openapi.from_url(f"{stack.url}/openapi.json", config=config)


def call_and_check(stack: Stack, case: schemathesis.Case) -> None:
    response = case.call_and_validate(headers={"X-API-Key": stack.keys.admin}, checks=CONTRACT_CHECKS)
    response_counts[f"{case.operation.label} {response.status_code}"] += 1

    if response.status_code == 201 and case.path == "/v1/feedback" and header(response, "idempotent-replayed") != "true":
        from_form = (case.media_type or "").startswith(FORM_TYPE)
        feedback_id = response.json()["id"]
        check_and_record(stack, feedback_id, dict(case.body), header(response, "x-request-id"), from_form=from_form)
        created_ids.add(feedback_id)
    if response.status_code == 200 and case.path == "/v1/feedback:batch":
        record_batch(stack, case.body, response.json(), header(response, "x-request-id"))
    if response.status_code == 200 and case.path == "/v1/admin/privacy/erase":
        # A generated address can match a row that an earlier case stored; that row is gone now.
        erased = set(response.json()["feedback_ids"])
        stack.erased_ids.update(erased)
        created_ids.difference_update(erased)
        for feedback_id in erased:
            stack.accepted.pop(feedback_id, None)


def header(response: schemathesis.Response, name: str) -> str | None:
    """Return one header of a schemathesis response, which keeps lower-case names and lists of values."""
    values = response.headers.get(name.lower())
    return values[0] if values else None


def record_batch(stack: Stack, body: dict[str, Any], result: dict[str, Any], request_id: str) -> None:
    for item in result["results"]:
        if item["status"] != "created":
            continue
        sent = body["submissions"][item["index"]]
        check_and_record(stack, item["id"], json.loads(json.dumps(sent)), request_id)
        created_ids.add(item["id"])


def run_cases(stack: Stack, strategy: Any) -> None:
    """Send the cases that `strategy` draws; raise on the first one that breaks the contract.

    Shrinking is off: it would send many more requests, and the failure message already
    contains the request as a curl command.
    """

    @settings(
        max_examples=MAX_EXAMPLES,
        # Far above the normal response time, so only a hung request fails the deadline.
        deadline=timedelta(seconds=20),
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        call_and_check(stack, case)

    run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_responses_match_schema(stack: Stack, mode: GenerationMode, capsys: pytest.CaptureFixture[str]) -> None:
    schema = load_schema(stack)
    failures: list[str] = []

    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        strategies = [operation.as_strategy(generation_mode=mode)]
        if mode is GenerationMode.POSITIVE:
            strategies.extend(schema.get_strategies_from_examples(operation))
        for strategy in strategies:
            try:
                run_cases(stack, strategy)
            except Unsatisfiable:
                # An operation without parameters or body has no request that breaks the schema.
                assert mode is GenerationMode.NEGATIVE, f"{operation.label}: no positive case could be generated"
            except Exception as error:  # noqa: BLE001 - collected, then reported together below
                failures.append(f"{operation.label}: {error}")
                break

    with capsys.disabled():
        print(f"\nschemathesis {mode.value}: " + ", ".join(f"{key}: {count}" for key, count in sorted(response_counts.items())))
    response_counts.clear()
    assert len(operations) >= 5, f"the schema lists only {[operation.label for operation in operations]}"
    assert failures == [], "\n\n".join(failures)


def test_contract_rows_confirmed(stack: Stack) -> None:
    # Runs after the generated cases: each row they stored must get its confirmation mail
    # before the after-shutdown tests count the mail.
    wait_for_confirmations(stack, created_ids)


def test_wrong_method_lists_allowed(stack: Stack) -> None:
    with stack.client(stack.keys.admin) as client:
        response = client.get(f"/v1/admin/outbox/{uuid.uuid4()}/retry")

    assert response.status_code == 405, response.text
    assert response.headers["Allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"
