"""Export and erasure of one customer's data through the gateway, down to the Parquet snapshots.

A replay of an erased submission's Idempotency-Key is stored as a new submission with a new
id: the erasure deletes the key's record together with the row, so nothing remembers the
key, and the erased id stays 404.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from feedbackbot import analysis
from models.privacy import email_sha256
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

# The default freshness target is 10 s; the deadline leaves room for a slow machine.
SNAPSHOT_DEADLINE_S = 60.0


def snapshot_ids(folder: Path) -> set[str]:
    try:
        connection = analysis.connect(folder)
    except analysis.SnapshotNotFound:
        return set()
    try:
        return {row[0] for row in connection.execute("SELECT id::VARCHAR FROM feedback").fetchall()}
    finally:
        connection.close()


def wait_for_snapshot(folder: Path, ids: set[str], *, present: bool) -> set[str]:
    """Poll the snapshots until all `ids` are in them (present) or none is; return the last match."""
    deadline = time.monotonic() + SNAPSHOT_DEADLINE_S
    while True:
        found = snapshot_ids(folder) & ids
        if (found == ids if present else not found) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def admin_post(stack: Stack, path: str, **kwargs: object) -> httpx.Response:
    with stack.client(stack.keys.admin) as client:
        return client.post(path, **kwargs)


def submission(address: str, index: int) -> dict[str, object]:
    return {
        "customer_name": "Grace Hopper",
        "customer_email": address,
        "feedback_text": f"Lovely service, order {index} came early, thank you!",
        "rating": 5,
    }


def test_erasure_reaches_snapshots(stack: Stack) -> None:
    address = f"erase.{uuid.uuid4().hex[:8]}@example.com"
    key = f"privacy-{uuid.uuid4()}"
    with stack.client(stack.keys.submit) as client:
        first = client.post("/v1/feedback", json=submission(address, 1), headers={"Idempotency-Key": key})
        second = client.post("/v1/feedback", json=submission(address.upper().replace("EXAMPLE", "example"), 2))
    assert first.status_code == 201, first.text
    assert second.status_code == 201, second.text
    ids = {first.json()["id"], second.json()["id"]}
    stack.erased_ids.update(ids)
    assert wait_for_snapshot(stack.snapshot_dir, ids, present=True) == ids

    exported = admin_post(stack, "/v1/admin/privacy/export", json={"email": address.upper()})
    assert exported.status_code == 200, exported.text
    body = exported.json()
    assert {row["id"] for row in body["feedback"]} == ids
    assert [row["feedback_id"] for row in body["idempotency_keys"]] == [first.json()["id"]]
    assert {row["feedback_id"] for row in body["outbox"]} <= ids
    assert body["erasures"] == []
    assert body["email_sha256"] == email_sha256(address)

    erased = admin_post(stack, "/v1/admin/privacy/erase", json={"email": address, "reason": "integration test"})
    assert erased.status_code == 200, erased.text
    result = erased.json()
    assert result["feedback_rows"] == 2
    assert result["idempotency_keys"] == 1
    assert set(result["feedback_ids"]) == ids

    assert wait_for_snapshot(stack.snapshot_dir, ids, present=False) == set()
    with stack.client(stack.keys.admin) as client:
        for feedback_id in ids:
            assert client.get(f"/v1/feedback/{feedback_id}").status_code == 404

    after = admin_post(stack, "/v1/admin/privacy/export", json={"email": address}).json()
    assert after["feedback"] == []
    assert [row["id"] for row in after["erasures"]] == [result["erasure_id"]]
    assert after["erasures"][0]["feedback_rows"] == 2

    with stack.client(stack.keys.submit) as client:
        replay = client.post("/v1/feedback", json=submission(address, 1), headers={"Idempotency-Key": key})
    assert replay.status_code == 201, replay.text
    assert "Idempotent-Replayed" not in replay.headers
    assert replay.json()["id"] not in ids
    stack.accepted[replay.json()["id"]] = {**submission(address, 1), "request_id": replay.headers["X-Request-ID"]}
    with stack.client(stack.keys.admin) as client:
        assert client.get(f"/v1/feedback/{first.json()['id']}").status_code == 404

    for deployment in ("Persistence", "Ingest"):
        assert not [line for line in stack.log_lines(deployment) if address in line.lower()]


def test_erase_unknown_address_recorded(stack: Stack) -> None:
    address = f"nobody.{uuid.uuid4().hex[:8]}@example.com"

    erased = admin_post(stack, "/v1/admin/privacy/erase", json={"email": address})

    assert erased.status_code == 200, erased.text
    assert (erased.json()["feedback_rows"], erased.json()["outbox_rows"], erased.json()["idempotency_keys"]) == (0, 0, 0)
    exported = admin_post(stack, "/v1/admin/privacy/export", json={"email": address}).json()
    assert [row["reason"] for row in exported["erasures"]] == ["data subject request"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-address"}, "email"),
        ({}, "email"),
        ({"email": "a@example.com", "reason": ""}, "reason"),
        ({"email": "a@example.com", "address": "a@example.com"}, "address"),
        (["a@example.com"], "body"),
    ],
)
def test_privacy_routes_reject_bad_body(stack: Stack, body: object, field: str) -> None:
    for path in ("/v1/admin/privacy/export", "/v1/admin/privacy/erase"):
        if field == "reason" and path.endswith("export"):
            continue

        response = admin_post(stack, path, json=body)

        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "validation_failed"
        assert [item["field"] for item in error["fields"]] == [field]
        assert error["request_id"]


def test_privacy_routes_reject_form_body(stack: Stack) -> None:
    response = admin_post(stack, "/v1/admin/privacy/erase", data={"email": "a@example.com"})

    assert response.status_code == 415, response.text
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_privacy_routes_need_admin_key(stack: Stack) -> None:
    with stack.client(stack.keys.submit) as client:
        response = client.post("/v1/admin/privacy/erase", json={"email": "a@example.com"})

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
