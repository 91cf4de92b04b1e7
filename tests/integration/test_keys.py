"""Roles per route, and `feedbackbot keys` against the running gateway: create, revoke, rotate, reload."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from feedbackbot.keys import KeyStore, hash_key
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

VALID = {
    "customer_name": "Ada Lovelace",
    "customer_email": "ada@example.com",
    "feedback_text": "Checking the keys and roles of the gateway.",
    "rating": 5,
}
# Each route with a request that reaches the graph and stores nothing, and the status the
# graph returns for it: 422 for invalid bodies, 404 for an unknown id.
ROUTES = {
    "submit": ("POST", "/v1/feedback", {"rating": 0}, 422),
    "batch": ("POST", "/v1/feedback:batch", {}, 422),
    "read": ("GET", f"/v1/feedback/{uuid.UUID(int=0)}", None, 404),
    "outbox": ("GET", "/v1/admin/outbox", None, 200),
}
# Route -> roles allowed. Everything else gets 403.
ALLOWED = {
    "submit": {"submit", "admin"},
    "batch": {"submit", "admin"},
    "read": {"analyst", "admin"},
    "outbox": {"admin"},
}
# The role that each route's 403 message names.
NEEDED_ROLE = {"submit": "submit or admin role", "batch": "submit or admin role", "read": "analyst role", "outbox": "admin role"}


def key_of(stack: Stack, role: str) -> str:
    return {"submit": stack.keys.submit, "analyst": stack.keys.analyst, "admin": stack.keys.admin}[role]


def send(stack: Stack, key: str, route: str) -> httpx.Response:
    method, path, body, _ = ROUTES[route]
    with stack.client(key) as client:
        return client.request(method, path, json=body)


def run_keys(stack: Stack, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run `feedbackbot keys ...` on the stack's store and gateway, as an operator would."""
    command = [sys.executable, "-m", "feedbackbot.cli", "keys", *arguments, "--keys-file", str(stack.service.config.keys_file)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def create_key(stack: Stack, role: str, label: str) -> str:
    result = run_keys(stack, "create", "--role", role, "--label", label)
    assert result.returncode == 0, result.stderr
    assert "Reloaded the gateway" in result.stderr
    return result.stdout.strip()


def key_id(key: str) -> str:
    return "k-" + hash_key(key)[:12]


def gateway_pid(stack: Stack) -> int:
    return int((stack.service.config.gateway_dir / "nginx.pid").read_text())


@pytest.mark.parametrize("role", ["submit", "analyst", "admin"])
@pytest.mark.parametrize("route", list(ROUTES))
def test_role_on_route(stack: Stack, role: str, route: str) -> None:
    response = send(stack, key_of(stack, role), route)

    if role in ALLOWED[route]:
        assert response.status_code == ROUTES[route][3], response.text
    else:
        assert response.status_code == 403, response.text
        error = response.json()["error"]
        assert error["code"] == "forbidden"
        assert NEEDED_ROLE[route] in error["message"]


def test_analyst_may_not_change_feedback(stack: Stack) -> None:
    with stack.client(stack.keys.analyst) as client:
        response = client.delete(f"/v1/feedback/{uuid.uuid4()}")

    assert response.status_code == 403
    assert "admin role" in response.json()["error"]["message"]


@pytest.mark.parametrize("role", ["submit", "analyst"])
@pytest.mark.parametrize("path", ["/v1/admin/privacy/export", "/v1/admin/privacy/erase"])
def test_privacy_routes_admin_only(stack: Stack, role: str, path: str) -> None:
    # The gateway rejects these before the graph sees the body, so the body does not matter.
    with stack.client(key_of(stack, role)) as client:
        response = client.post(path, json={"customer_email": "ada@example.com"})

    assert response.status_code == 403
    assert "admin role" in response.json()["error"]["message"]


def test_created_key_works_without_restart(stack: Stack) -> None:
    pid_before = gateway_pid(stack)

    key = create_key(stack, "submit", "tests: created")

    assert send(stack, key, "submit").status_code == 422
    assert gateway_pid(stack) == pid_before


def test_revoked_key_unauthorized(stack: Stack) -> None:
    key = create_key(stack, "admin", "tests: revoked")
    assert send(stack, key, "outbox").status_code == 200

    result = run_keys(stack, "revoke", key_id(key))

    assert result.returncode == 0, result.stderr
    response = send(stack, key, "outbox")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_rotate_replaces_key(stack: Stack) -> None:
    old_key = create_key(stack, "analyst", "tests: rotated")

    result = run_keys(stack, "rotate", key_id(old_key))

    assert result.returncode == 0, result.stderr
    new_key = result.stdout.strip()
    assert new_key != old_key
    assert send(stack, old_key, "read").status_code == 401
    assert send(stack, new_key, "read").status_code == 404
    assert send(stack, new_key, "submit").status_code == 403
    new_record = KeyStore(stack.service.config.keys_file).get(key_id(new_key))
    assert new_record.label == "tests: rotated"


def test_unknown_key_id_rejected(stack: Stack) -> None:
    result = run_keys(stack, "revoke", "k-000000000000")

    assert result.returncode == 2
    assert "unknown key id 'k-000000000000'" in result.stderr


def test_reload_drops_no_request(stack: Stack) -> None:
    with stack.client(stack.keys.submit) as client:
        created = client.post("/v1/feedback", json=VALID)
    assert created.status_code == 201, created.text
    # The after-shutdown checks compare the database and the mail sink with stack.accepted.
    stack.accepted[created.json()["id"]] = {**VALID, "request_id": created.headers["X-Request-ID"]}
    path = f"/v1/feedback/{created.json()['id']}"
    statuses: list[int] = []
    failures: list[str] = []
    done = threading.Event()

    def read_continuously() -> None:
        # A new connection for each request: Nginx closes idle keep-alive connections of
        # old workers at a reload, which clients must retry, but it never drops a request
        # in flight or a new connection.
        limits = httpx.Limits(max_keepalive_connections=0)
        with stack.client(stack.keys.admin, limits=limits) as client:
            # Bounded, so a hang cannot keep the test running.
            for _ in range(2000):
                if done.is_set():
                    return
                try:
                    statuses.append(client.get(path).status_code)
                except httpx.HTTPError as error:
                    failures.append(repr(error))

    readers = [threading.Thread(target=read_continuously) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        for round_number in range(3):
            key = create_key(stack, "submit", f"tests: reload round {round_number}")
            assert run_keys(stack, "revoke", key_id(key)).returncode == 0
    finally:
        done.set()
        for reader in readers:
            reader.join(timeout=60)

    assert failures == []
    assert len(statuses) > 10
    assert set(statuses) <= {200, 429}
    assert 200 in statuses


def test_no_plain_key_in_store_or_map(stack: Stack) -> None:
    config = stack.service.config
    store_text = config.keys_file.read_text()
    map_text = (config.gateway_dir / "api-keys.map").read_text()
    plain_keys = [stack.keys.submit, stack.keys.admin, stack.keys.analyst, stack.keys.rate_limited, stack.keys.chaos]

    for key in plain_keys:
        assert key not in store_text
        assert key not in map_text
        assert hash_key(key) in store_text
        assert hash_key(key) in map_text
    assert not (config.data_dir / "api-keys.txt").exists()


def test_store_file_private(stack: Stack) -> None:
    assert stack.service.config.keys_file.stat().st_mode & 0o777 == 0o600


def test_key_id_forwarded_not_key(stack: Stack) -> None:
    # The access log carries the key id of each request, never the key.
    with stack.client(stack.keys.analyst) as client:
        client.get(f"/v1/feedback/{uuid.uuid4()}")
    log = Path(stack.service.config.gateway_dir / "access.log")
    deadline = time.monotonic() + 10.0
    text = ""
    while time.monotonic() < deadline:
        text = log.read_text()
        if key_id(stack.keys.analyst) in text:
            break
        time.sleep(0.1)

    assert f'"key_id":"{key_id(stack.keys.analyst)}"' in text
    assert stack.keys.analyst not in text
