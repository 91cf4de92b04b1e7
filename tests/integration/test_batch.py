"""POST /v1/feedback:batch through the gateway: per-item results, one commit, safe retries."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.integration.conftest import Stack, count_notifications

pytestmark = pytest.mark.integration

BATCH_ROUTE = "/v1/feedback:batch"


def item(index: int, **changes: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "customer_name": f"Batch customer {index}",
        "customer_email": f"batch.{uuid.uuid4().hex[:8]}@example.com",
        "feedback_text": f"Batch item {index}: the delivery was quick and the parcel intact.",
        "rating": 4,
    }
    payload.update(changes)
    return payload


def post_batch(stack: Stack, submissions: list, **headers: str) -> httpx.Response:
    with stack.client(stack.keys.submit) as client:
        return client.post(BATCH_ROUTE, json={"submissions": submissions}, headers=headers)


def remember(stack: Stack, response: httpx.Response, submissions: list[dict]) -> None:
    for result in response.json()["results"]:
        if result["status"] == "created":
            stack.accepted[result["id"]] = {**submissions[result["index"]], "request_id": response.headers["X-Request-ID"]}


def test_batch_answers_each_item(stack: Stack) -> None:
    submissions = [item(0), item(1, rating=9), item(2), item(3, customer_email="not-an-address"), item(4, rating=1)]

    response = post_batch(stack, submissions)

    assert response.status_code == 200, response.text
    remember(stack, response, submissions)
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (3, 2)
    statuses = [(result["index"], result["status"]) for result in body["results"]]
    assert statuses == [(0, "created"), (1, "rejected"), (2, "created"), (3, "rejected"), (4, "created")]
    assert [error["field"] for error in body["results"][1]["errors"]] == ["rating"]
    assert [error["field"] for error in body["results"][3]["errors"]] == ["customer_email"]

    with stack.client(stack.keys.admin) as client:
        for result in body["results"]:
            if result["status"] != "created":
                assert result["id"] is None
                continue
            stored = client.get(f"/v1/feedback/{result['id']}")
            assert stored.status_code == 200
            assert stored.json()["customer_name"] == submissions[result["index"]]["customer_name"]
            assert stored.json()["request_id"] == response.headers["X-Request-ID"]
            assert result["sentiment_status"] == "done"


def test_batch_retry_replays_each_item(stack: Stack) -> None:
    submissions = [item(index) for index in range(5)]
    key = f"batch-{uuid.uuid4()}"

    first = post_batch(stack, submissions, **{"Idempotency-Key": key})
    again = post_batch(stack, submissions, **{"Idempotency-Key": key})
    changed = post_batch(stack, [item(9)] + submissions[1:], **{"Idempotency-Key": key})

    assert first.status_code == 200, first.text
    remember(stack, first, submissions)
    assert [result["status"] for result in first.json()["results"]] == ["created"] * 5
    assert again.status_code == 200, again.text
    assert [result["status"] for result in again.json()["results"]] == ["replayed"] * 5
    assert [result["id"] for result in again.json()["results"]] == [result["id"] for result in first.json()["results"]]
    assert [result["status"] for result in changed.json()["results"]] == ["conflict"] + ["replayed"] * 4
    assert changed.json()["results"][0]["errors"][0]["field"] == "Idempotency-Key"


def test_full_batch_stored(stack: Stack) -> None:
    submissions = [item(index, rating=1 + index % 5) for index in range(500)]

    response = post_batch(stack, submissions)

    assert response.status_code == 200, response.text
    remember(stack, response, submissions)
    assert response.json()["accepted"] == 500
    ids = {result["id"] for result in response.json()["results"]}
    assert len(ids) == 500
    # Ratings 1 and 2 owe an admin alert. The checks after shutdown count the mail, so it
    # has to arrive while the service runs.
    low = {result["id"] for result in response.json()["results"] if submissions[result["index"]]["rating"] <= 2}

    def delivered(mails) -> bool:
        confirmations, alerts = count_notifications(mails, ids)
        return set(confirmations) == ids and low <= set(alerts)

    stack.wait_for_mail(delivered, timeout_s=180.0)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"submissions": []}, "got 0 items"),
        ({"submissions": [item(0)] * 501}, "got 501 items"),
        ({"items": [item(0)]}, "got no such list"),
        ([item(0)], "got no such list"),
    ],
)
def test_bad_batch_envelope_rejected(stack: Stack, body: object, problem: str) -> None:
    with stack.client(stack.keys.submit) as client:
        response = client.post(BATCH_ROUTE, json=body)

    assert response.status_code == 422, response.text
    [field] = response.json()["error"]["fields"]
    assert field["field"] == "submissions"
    assert problem in field["message"]


def test_batch_needs_json(stack: Stack) -> None:
    with stack.client(stack.keys.submit) as client:
        form = client.post(BATCH_ROUTE, data={"submissions": "x"})
        broken = client.post(BATCH_ROUTE, content=b"{", headers={"Content-Type": "application/json"})

    assert form.status_code == 415
    assert form.json()["error"]["code"] == "unsupported_media_type"
    assert broken.status_code == 422
    assert broken.json()["error"]["fields"][0]["field"] == "body"


def test_batch_over_body_limit_rejected(stack: Stack) -> None:
    filler = "x" * 4990
    submissions = [item(index, feedback_text=filler) for index in range(900)]

    response = post_batch(stack, submissions)

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_batch_needs_key(stack: Stack) -> None:
    with stack.client() as client:
        response = client.post(BATCH_ROUTE, json={"submissions": [item(0)]})

    assert response.status_code == 401
