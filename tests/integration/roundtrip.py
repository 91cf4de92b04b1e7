"""Read-back checks shared by the hostile-input and OpenAPI contract tests.

Every row that these tests store is read back through GET /v1/feedback/{id}, compared with
what the README rules require, and recorded in `stack.accepted`, because the
after-shutdown tests of test_pipeline.py expect DuckDB and the mail sink to hold exactly the
recorded rows.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from models.feedback import validate_submission
from tests.integration.conftest import Stack, count_notifications, read_mail

STORED_FIELDS = ("customer_name", "customer_email", "feedback_text", "rating")


def expected_record(sent: dict[str, Any], *, from_form: bool = False) -> dict[str, Any]:
    """Return the four fields as the rules store them: trimmed, CRLF as LF, address normalised."""
    result = validate_submission(sent, from_form=from_form)
    assert result.submission is not None, f"a stored submission is invalid by the rules: {result.errors}"
    return result.submission.model_dump()


def read_back(stack: Stack, feedback_id: str) -> dict[str, Any]:
    with stack.client(stack.keys.admin) as client:
        response = client.get(f"/v1/feedback/{feedback_id}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def check_and_record(
    stack: Stack, feedback_id: str, sent: dict[str, Any], request_id: str, *, from_form: bool = False
) -> dict[str, Any]:
    """Assert that the stored row is `sent` as the rules store it, record it and return it."""
    expected = expected_record(sent, from_form=from_form)

    stored = read_back(stack, feedback_id)

    for name in STORED_FIELDS:
        assert stored[name] == expected[name], f"{name} was stored as {stored[name]!r}, expected {expected[name]!r}"
    assert stored["request_id"] == request_id
    stack.accepted[feedback_id] = {**expected, "request_id": request_id}
    return stored


def wait_for_confirmations(stack: Stack, feedback_ids: set[str], timeout_s: float = 120.0) -> None:
    """Wait until the sink contains a confirmation for each id, so later tests see settled mail.

    At the deadline the failure lists each missing id with its address and outbox entries.
    """
    deadline = time.monotonic() + timeout_s
    missing = set(feedback_ids)
    while time.monotonic() < deadline:
        confirmations, _ = count_notifications(read_mail(stack.mail_dir), feedback_ids)
        missing = feedback_ids - set(confirmations) - stack.erased_ids
        if not missing:
            return
        time.sleep(0.5)

    with stack.client(stack.keys.admin) as client:
        entries = [
            entry
            for status in ("pending", "dead")
            for entry in client.get("/v1/admin/outbox", params={"status": status, "limit": 1000}).json()
            if entry["feedback_id"] in missing and entry["kind"] == "confirmation"
        ]
    details = [
        f"{feedback_id} to {stack.accepted.get(feedback_id, {}).get('customer_email')!r}: "
        f"{[(entry['status'], entry['attempts'], entry['last_error']) for entry in entries if entry['feedback_id'] == feedback_id]}"
        for feedback_id in sorted(missing)
    ]
    pytest.fail(f"{len(missing)} confirmation(s) did not arrive within {timeout_s} s:\n" + "\n".join(details))
