"""The Nginx gateway in front of the real graph: keys, roles, body limit, rate limits, CORS, ids."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest

from tests.integration.conftest import ANALYST_RATE_PER_ADDRESS_BURST, CORS_ORIGIN, RATE_BURST, Stack

pytestmark = pytest.mark.integration

VALID = {
    "customer_name": "Grace Hopper",
    "customer_email": "grace@example.com",
    "feedback_text": "Checking the gateway with a valid body.",
    "rating": 4,
}


def assert_error_shape(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["request_id"] == response.headers["X-Request-ID"]


def test_missing_key_unauthorized(stack: Stack) -> None:
    with stack.client() as client:
        response = client.post("/v1/feedback", json=VALID)

    assert_error_shape(response, 401, "unauthorized")


def test_access_log_names_rejected_route(stack: Stack) -> None:
    # error_page turns a rejected request into GET /_errors/401 inside Nginx, but the log keeps the client's method and path.
    request_id = "rejected-" + uuid.uuid4().hex
    with stack.client() as client:
        response = client.post("/v1/feedback?source=test", json=VALID, headers={"X-Request-ID": request_id})
    assert response.status_code == 401

    log = stack.service.config.gateway_dir / "access.log"
    deadline = time.monotonic() + 10.0
    lines: list[dict[str, object]] = []
    while not lines and time.monotonic() < deadline:
        lines = [json.loads(line) for line in log.read_text().splitlines() if request_id in line]
        if not lines:
            time.sleep(0.1)

    assert len(lines) == 1
    assert lines[0]["method"] == "POST"
    assert lines[0]["uri"] == "/v1/feedback"
    assert lines[0]["status"] == 401


def test_unknown_key_unauthorized(stack: Stack) -> None:
    with stack.client("not-a-key-" + uuid.uuid4().hex) as client:
        response = client.post("/v1/feedback", json=VALID)

    assert_error_shape(response, 401, "unauthorized")


def test_admin_route_needs_key(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get(f"/v1/feedback/{uuid.uuid4()}")

    assert_error_shape(response, 401, "unauthorized")


def test_submit_key_forbidden_on_read_route(stack: Stack) -> None:
    with stack.client(stack.keys.submit) as client:
        response = client.get(f"/v1/feedback/{uuid.uuid4()}")

    assert_error_shape(response, 403, "forbidden")
    assert "analyst role" in response.json()["error"]["message"]


def test_analyst_key_forbidden_on_submit(stack: Stack) -> None:
    with stack.client(stack.keys.analyst) as client:
        response = client.post("/v1/feedback", json=VALID)

    assert_error_shape(response, 403, "forbidden")
    assert "submit or admin role" in response.json()["error"]["message"]


def test_admin_key_may_submit(stack: Stack) -> None:
    marker = f"rejected-{uuid.uuid4().hex}"
    stack.rejected_markers.append(marker)

    with stack.client(stack.keys.admin) as client:
        response = client.post("/v1/feedback", json={**VALID, "customer_name": marker, "rating": 0})

    assert response.status_code == 422


def test_oversized_body_rejected(stack: Stack) -> None:
    body = {**VALID, "feedback_text": "x" * (64 * 1024 + 1)}

    with stack.client(stack.keys.submit) as client:
        response = client.post("/v1/feedback", json=body)

    assert_error_shape(response, 413, "payload_too_large")


def test_unknown_route_not_found(stack: Stack) -> None:
    with stack.client(stack.keys.admin) as client:
        response = client.get("/v2/anything")

    assert_error_shape(response, 404, "not_found")


def test_client_request_id_kept(stack: Stack) -> None:
    request_id = "client-" + uuid.uuid4().hex

    with stack.client() as client:
        response = client.get("/healthz", headers={"X-Request-ID": request_id})

    assert response.headers["X-Request-ID"] == request_id


@pytest.mark.parametrize("bad_id", ["short", "has space in it", "quote\"inside-the-id", "x" * 129])
def test_unsafe_request_id_replaced(stack: Stack, bad_id: str) -> None:
    with stack.client() as client:
        response = client.get("/healthz", headers={"X-Request-ID": bad_id})

    replaced = response.headers["X-Request-ID"]
    assert replaced != bad_id
    assert len(replaced) == 32


def test_key_not_forwarded_to_graph(stack: Stack) -> None:
    # Serve responds directly without the gateway, so the graph does not depend on the key.
    response = httpx.get(f"{stack.serve_url}/healthz", timeout=30.0)

    assert response.status_code == 200


def test_rate_limit_per_key(stack: Stack) -> None:
    attempts = RATE_BURST * 3

    async def hammer() -> list[httpx.Response]:
        headers = {"X-API-Key": stack.keys.rate_limited}
        # One connection per request, so that all of them reach Nginx at about the same time.
        limits = httpx.Limits(max_connections=attempts)
        async with httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=60.0, limits=limits) as client:
            # An invalid body keeps the graph's work small and stores nothing.
            requests = [client.post("/v1/feedback", json={"rating": 0}) for _ in range(attempts)]
            return await asyncio.gather(*requests)

    responses = asyncio.run(hammer())

    statuses = [response.status_code for response in responses]
    limited = [response for response in responses if response.status_code == 429]
    assert set(statuses) <= {422, 429}
    assert limited, f"no 429 among {attempts} requests sent at once"
    assert statuses.count(422) >= RATE_BURST
    assert_error_shape(limited[0], 429, "rate_limited")
    assert int(limited[0].headers["Retry-After"]) >= 1

    with stack.client(stack.keys.submit) as client:
        other_key = client.post("/v1/feedback", json={"rating": 0})
    assert other_key.status_code == 422


def test_rate_limit_per_address(stack: Stack) -> None:
    attempts = ANALYST_RATE_PER_ADDRESS_BURST * 3
    path = f"/v1/feedback/{uuid.uuid4()}"

    async def read_from(address: str, keys: list[str], count: int) -> list[httpx.Response]:
        # Linux routes all of 127.0.0.0/8 to the loopback interface, so each address is a
        # separate client address for Nginx.
        transport = httpx.AsyncHTTPTransport(local_address=address)
        async with httpx.AsyncClient(base_url=stack.url, timeout=60.0, transport=transport) as client:
            requests = [client.get(path, headers={"X-API-Key": keys[i % len(keys)]}) for i in range(count)]
            return await asyncio.gather(*requests)

    # Two analyst keys from one address share its bucket, while each key stays far below
    # its own limit of RATE_BURST.
    crowded = asyncio.run(read_from("127.0.0.7", [stack.keys.analyst, stack.keys.analyst_other], attempts))
    elsewhere = asyncio.run(read_from("127.0.0.8", [stack.keys.analyst], 1))

    statuses = [response.status_code for response in crowded]
    limited = [response for response in crowded if response.status_code == 429]
    assert set(statuses) <= {404, 429}
    assert limited, f"no 429 among {attempts} requests from one address"
    assert statuses.count(404) <= ANALYST_RATE_PER_ADDRESS_BURST + 3
    assert_error_shape(limited[0], 429, "rate_limited")
    assert elsewhere[0].status_code == 404


def test_cors_preflight_allowed_origin(stack: Stack) -> None:
    headers = {"Origin": CORS_ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}

    with stack.client() as client:
        response = client.options("/v1/feedback", headers=headers)

    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == CORS_ORIGIN
    assert response.headers["Access-Control-Allow-Methods"] == "POST"
    assert "X-API-Key" in response.headers["Access-Control-Allow-Headers"]
    assert "Origin" in response.headers["Vary"]


def test_cors_preflight_other_origin(stack: Stack) -> None:
    headers = {"Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"}

    with stack.client() as client:
        response = client.options("/v1/feedback", headers=headers)

    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Methods" not in response.headers


def test_cors_post_allowed_origin(stack: Stack) -> None:
    with stack.client(stack.keys.submit) as client:
        invalid = client.post("/v1/feedback", json={"rating": 0}, headers={"Origin": CORS_ORIGIN})
    with stack.client() as client:
        no_key = client.post("/v1/feedback", json=VALID, headers={"Origin": CORS_ORIGIN})

    assert invalid.status_code == 422
    assert invalid.headers["Access-Control-Allow-Origin"] == CORS_ORIGIN
    assert "X-Request-ID" in invalid.headers["Access-Control-Expose-Headers"]
    assert_error_shape(no_key, 401, "unauthorized")
    assert no_key.headers["Access-Control-Allow-Origin"] == CORS_ORIGIN


def test_cors_post_other_origin(stack: Stack) -> None:
    with stack.client(stack.keys.submit) as client:
        response = client.post("/v1/feedback", json={"rating": 0}, headers={"Origin": "https://evil.example.com"})

    assert response.status_code == 422
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_only_on_feedback_post_route(stack: Stack) -> None:
    with stack.client(stack.keys.admin) as client:
        response = client.get("/v1/admin/outbox", headers={"Origin": CORS_ORIGIN})

    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers
