"""Idempotency-Key through the gateway: a retried submission is stored and mailed once."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def submission() -> dict[str, object]:
    return {
        "customer_name": "Katherine Johnson",
        "customer_email": f"kj.{uuid.uuid4().hex[:8]}@example.com",
        "feedback_text": f"Retry-safe submission, reference {uuid.uuid4().hex}.",
        "rating": 4,
    }


def post(stack: Stack, payload: dict, key: str, **kwargs: object) -> httpx.Response:
    with stack.client(stack.keys.submit) as client:
        return client.post("/v1/feedback", json=payload, headers={"Idempotency-Key": key}, **kwargs)


def remember(stack: Stack, response: httpx.Response, payload: dict) -> None:
    body = response.json()
    stack.accepted[body["id"]] = {
        **payload,
        "request_id": response.headers["X-Request-ID"],
        "sentiment_label": body["sentiment"]["label"],
    }


def test_repeat_returns_original(stack: Stack) -> None:
    payload = submission()
    key = f"order-{uuid.uuid4()}"

    first = post(stack, payload, key)
    second = post(stack, payload, key)

    assert first.status_code == 201, first.text
    remember(stack, first, payload)
    assert second.status_code == 201, second.text
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    stack.mailed_once.add(first.json()["id"])


def test_same_key_from_two_api_keys_stored_twice(stack: Stack) -> None:
    key = f"shared-{uuid.uuid4()}"
    mine, theirs = submission(), submission()

    first = post(stack, mine, key)
    with stack.client(stack.keys.rate_limited) as client:
        second = client.post("/v1/feedback", json=theirs, headers={"Idempotency-Key": key})

    assert first.status_code == 201, first.text
    assert second.status_code == 201, second.text
    remember(stack, first, mine)
    remember(stack, second, theirs)
    assert first.json()["id"] != second.json()["id"]


def test_form_repeat_of_json_replayed(stack: Stack) -> None:
    payload = submission()
    key = f"form-{uuid.uuid4()}"

    first = post(stack, payload, key)
    with stack.client(stack.keys.submit) as client:
        second = client.post(
            "/v1/feedback", data={**payload, "rating": str(payload["rating"])}, headers={"Idempotency-Key": key}
        )

    assert first.status_code == 201, first.text
    remember(stack, first, payload)
    assert second.status_code == 201, second.text
    assert second.json()["id"] == first.json()["id"]


def test_key_with_other_body_conflicts(stack: Stack) -> None:
    payload = submission()
    key = f"conflict-{uuid.uuid4()}"
    first = post(stack, payload, key)
    assert first.status_code == 201, first.text
    remember(stack, first, payload)

    changed = {**payload, "rating": 1}
    second = post(stack, changed, key)

    assert second.status_code == 409, second.text
    error = second.json()["error"]
    assert error["code"] == "idempotency_conflict"
    assert key in error["message"]
    assert error["request_id"] == second.headers["X-Request-ID"]


def test_concurrent_repeats_store_once(stack: Stack) -> None:
    payload = submission()
    key = f"burst-{uuid.uuid4()}"

    async def send_all() -> list[httpx.Response]:
        headers = {"X-API-Key": stack.keys.submit, "Idempotency-Key": key}
        async with httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=60.0) as client:
            return await asyncio.gather(*(client.post("/v1/feedback", json=payload) for _ in range(12)))

    responses = asyncio.run(send_all())

    assert {response.status_code for response in responses} == {201}
    assert len({response.json()["id"] for response in responses}) == 1
    assert sum(1 for response in responses if "Idempotent-Replayed" not in response.headers) == 1
    remember(stack, responses[0], payload)
    # Any of the twelve requests may have created the row, so its request id is unknown here.
    stack.accepted[responses[0].json()["id"]]["request_id"] = None
    stack.mailed_once.add(responses[0].json()["id"])


@pytest.mark.parametrize("bad_key", ["", "has space", "é-not-ascii", "k" * 256])
def test_invalid_key_rejected(stack: Stack, bad_key: str) -> None:
    with stack.client(stack.keys.submit) as client:
        response = client.post(
            "/v1/feedback", json=submission(), headers={"Idempotency-Key": bad_key.encode("utf-8")}
        )

    assert response.status_code == 422, response.text
    assert [item["field"] for item in response.json()["error"]["fields"]] == ["Idempotency-Key"]
